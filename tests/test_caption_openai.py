"""The OpenAI-compatible caption engine against a real HTTP server started here.

The fake server speaks llama-server's JSON shapes, decodes the JPEG it is sent and describes it,
so a caption proves the image travelled; it counts requests in flight to check the pipeline. Like
a real server it honours ``max_tokens`` (a word is a token here): an answer cut at the limit
comes back with ``finish_reason`` "length".
"""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image, ImageStat

from lora_lab.captioning import openai_server
from lora_lab.captioning.base import RETRY_MAX_TOKENS, Answer, CaptionError, prepare_image, retry_tokens
from lora_lab.captioning.openai_server import OpenAIServerCaptioner, api_base
from lora_lab.datasets import Dataset
from lora_lab.jobdir import open_job

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 210)}


class FakeState:
    """What the fake server does and what it saw; reset before every test."""

    def __init__(self):
        self.lock = threading.Condition()
        self.release = threading.Event()  # ends "hang" replies
        self.reset()

    def reset(self):
        self.release.set()
        with self.lock:  # replies of the last test still running would unbalance the count
            self.lock.wait_for(lambda: getattr(self, "in_flight", 0) <= 0, timeout=15)
        self.release = threading.Event()
        self.models = ["tiny-vlm"]
        self.delay = 0.0
        self.gate = 0  # the first `gate` answers wait (up to 15 s) until that many are in flight
        self.script: list = []  # replies given before normal ones: (status, body) | "hang" | "drop"
        self.requests: list[dict] = []  # {"method", "path", "headers", "body"}
        self.in_flight = self.max_in_flight = 0

    def posts(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]


def describe(data_url: str) -> str:
    """What the "model" answers: the size and main colour of the JPEG in the data URI."""
    header, b64 = data_url.split(",", 1)
    assert header == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.format == "JPEG"
        means = ImageStat.Stat(im.convert("RGB")).mean
        colour = list(COLOURS)[means.index(max(means))]
        return f"an image of {im.width}x{im.height} pixels, mostly {colour}"


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _record(self, body: dict | None) -> FakeState:
        state = self.server.state
        with state.lock:
            state.requests.append({"method": self.command, "path": self.path,
                                   "headers": dict(self.headers), "body": body})
        return state

    def _send(self, status: int, body: bytes | dict):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout test)
            pass

    def do_GET(self):
        state = self._record(None)
        if self.path != "/v1/models":
            return self._send(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})
        self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "llamacpp"}
                                                    for m in state.models]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state = self._record(body)
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            state.lock.notify_all()
            scripted = state.script.pop(0) if state.script else None
        try:
            self._reply(state, body, scripted)
        finally:
            with state.lock:
                state.in_flight -= 1
                state.lock.notify_all()

    def _reply(self, state: FakeState, body: dict, scripted):
        if scripted == "hang":
            state.release.wait(10)
            return
        if scripted == "drop":  # close the connection without an answer
            self.close_connection = True
            return
        if scripted:
            return self._send(*scripted)
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})
        image = next(p for p in body["messages"][0]["content"] if p["type"] == "image_url")
        answer = describe(image["image_url"]["url"])
        with state.lock:  # so a slow, busy test machine cannot hide the first wave's overlap
            if len(state.posts()) <= state.gate:
                state.lock.wait_for(lambda: state.in_flight >= state.gate, timeout=15)
        state.release.wait(state.delay)
        words = answer.split(" ")
        finish = "length" if len(words) > body["max_tokens"] else "stop"
        answer = " ".join(words[:body["max_tokens"]])
        self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": finish,
                                      "message": {"role": "assistant", "content": answer}}],
                         "usage": {"prompt_tokens": 80, "completion_tokens": len(answer.split(" ")),
                                   "total_tokens": 80 + len(answer.split(" "))}})


def serve() -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = FakeState()
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd


def stop(httpd: ThreadingHTTPServer) -> None:
    httpd.state.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server():
    httpd = serve()
    yield httpd
    stop(httpd)


@pytest.fixture(scope="module")
def second_server():
    """Another server for a run shared by two."""
    httpd = serve()
    yield httpd
    stop(httpd)


@pytest.fixture
def fake(server, monkeypatch) -> FakeState:
    server.state.reset()
    monkeypatch.delenv("LORA_LAB_CAPTION_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(openai_server, "BACKOFF_S", 0.02)
    yield server.state
    server.state.release.set()


@pytest.fixture
def fake2(second_server, fake) -> FakeState:
    second_server.state.reset()
    yield second_server.state
    second_server.state.release.set()


@pytest.fixture
def url(server) -> str:
    return f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def url2(second_server) -> str:
    return f"http://127.0.0.1:{second_server.server_port}"


def jpeg(colour: str = "red", size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(buf, "PNG")
    return prepare_image(buf.getvalue())


def test_one_caption_sends_the_openai_request(fake, url):
    cap = OpenAIServerCaptioner(url, model="qwen2.5-vl", max_tokens=123, temperature=0.1)
    image = jpeg("red")
    assert cap.caption(image, "Describe this image.") == Answer("an image of 64x48 pixels, mostly red")
    [post] = fake.posts()
    assert post["path"] == "/v1/chat/completions"
    body = post["body"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("qwen2.5-vl", 123, 0.1)
    [message] = body["messages"]
    assert message["role"] == "user"
    sent_image, text = message["content"]
    assert base64.b64decode(sent_image["image_url"]["url"].split(",", 1)[1]) == image
    assert text == {"type": "text", "text": "Describe this image."}
    assert "Authorization" not in post["headers"]
    cap.close()


def test_the_answer_reflects_the_image_sent(fake, url):
    cap = OpenAIServerCaptioner(url)
    assert cap.caption(jpeg("green", (100, 30)), "p").text == "an image of 100x30 pixels, mostly green"
    assert cap.caption(jpeg("blue", (20, 90)), "p").text == "an image of 20x90 pixels, mostly blue"


def test_caption_many_keeps_four_in_flight_and_keys_every_result(fake, url):
    fake.delay, fake.gate = 0.2, 4
    cap = OpenAIServerCaptioner(url, concurrency=4)
    expected = {}
    pulled = 0

    def items():
        nonlocal pulled
        for i in range(12):
            colour, size = list(COLOURS)[i % 3], (40 + i, 30 + 2 * i)
            expected[f"img{i}"] = Answer(f"an image of {size[0]}x{size[1]} pixels, mostly {colour}")
            pulled += 1
            yield f"img{i}", jpeg(colour, size), "Describe this image."

    results, pulled_at_first = {}, None
    for key, answer in cap.caption_many(items()):
        pulled_at_first = pulled if pulled_at_first is None else pulled_at_first
        assert key not in results
        results[key] = answer
    assert results == expected
    assert fake.max_in_flight == 4  # four at once (so ~4x faster than one by one), never more
    assert len(fake.posts()) == 12
    assert pulled_at_first <= 8  # the input is read lazily, a few slots ahead, not all at once


def test_caption_many_yields_a_failure_and_goes_on(fake, url):
    fake.script = [(400, {"error": {"code": 400, "message": "image too large", "type": "invalid_request_error"}})]
    cap = OpenAIServerCaptioner(url, concurrency=2)
    results = dict(cap.caption_many((i, jpeg(), "p") for i in range(3)))
    assert sorted(results) == [0, 1, 2]
    errors = [r for r in results.values() if isinstance(r, CaptionError)]
    assert len(errors) == 1 and "image too large" in str(errors[0])
    assert sum(r == Answer("an image of 64x48 pixels, mostly red") for r in results.values()) == 2
    assert list(cap.caption_many([])) == []


def test_an_answer_cut_by_the_token_limit_is_asked_again_with_double(fake, url):
    cap = OpenAIServerCaptioner(url, max_tokens=4)  # the answer is 7 "tokens": cut at 4, whole at 8
    assert cap.caption(jpeg(), "p") == Answer("an image of 64x48 pixels, mostly red", retried=True)
    assert [p["body"]["max_tokens"] for p in fake.posts()] == [4, 8]


def test_an_answer_cut_even_at_double_comes_back_marked_truncated(fake, url):
    cap = OpenAIServerCaptioner(url, max_tokens=2)
    assert cap.caption(jpeg(), "p") == Answer("an image of 64x48", truncated=True, retried=True)
    assert [p["body"]["max_tokens"] for p in fake.posts()] == [2, 4]


def test_the_retry_limit_is_capped(fake, url):
    assert (retry_tokens(300), retry_tokens(1500), retry_tokens(RETRY_MAX_TOKENS)) == (
        600, RETRY_MAX_TOKENS, RETRY_MAX_TOKENS)
    fake.script = [(200, {"choices": [{"finish_reason": "length", "message": {"content": "a red"}}]})]
    cap = OpenAIServerCaptioner(url, max_tokens=RETRY_MAX_TOKENS)
    assert cap.caption(jpeg(), "p") == Answer("a red", truncated=True)  # no larger limit to ask for
    assert len(fake.posts()) == 1


@pytest.mark.parametrize("failure", [
    (500, {"error": {"code": 500, "message": "slot crashed", "type": "server_error"}}),
    (503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}),
    (429, {"error": {"message": "too many requests"}}),
    "drop",
])
def test_a_transient_failure_is_retried(fake, url, failure):
    fake.script = [failure]
    cap = OpenAIServerCaptioner(url)
    assert cap.caption(jpeg(), "p") == Answer("an image of 64x48 pixels, mostly red")
    assert len(fake.posts()) == 2


def test_retries_give_up_with_the_server_message(fake, url):
    fake.script = [(500, {"error": {"code": 500, "message": "out of memory", "type": "server_error"}})] * 3
    cap = OpenAIServerCaptioner(url, retries=2)
    with pytest.raises(CaptionError, match=r"HTTP 500: out of memory \(tried 3 times\)"):
        cap.caption(jpeg(), "p")
    assert len(fake.posts()) == 3


def test_a_400_is_not_retried_and_its_message_surfaces(fake, url):
    message = "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"
    fake.script = [(400, {"error": {"code": 400, "message": message, "type": "invalid_request_error"}})]
    cap = OpenAIServerCaptioner(url)
    with pytest.raises(CaptionError) as e:
        cap.caption(jpeg(), "p")
    assert str(e.value) == f"caption server at {url}/v1 answered HTTP 400: {message}"
    assert len(fake.posts()) == 1


def test_a_401_says_to_set_the_api_key(fake, url):
    fake.script = [(401, {"error": "Invalid API Key"})]  # LM Studio-style: error is a string
    with pytest.raises(CaptionError, match=r"HTTP 401: Invalid API Key \(set the API key"):
        OpenAIServerCaptioner(url, model="m").caption(jpeg(), "p")


def test_a_hanging_request_times_out(fake, url):
    fake.script = ["hang"]
    cap = OpenAIServerCaptioner(url, timeout=0.5)
    with pytest.raises(CaptionError, match=r"did not answer within 0.5 s"):
        cap.caption(jpeg(), "p")
    assert len(fake.posts()) == 1  # a stuck generation is not retried


@pytest.mark.parametrize("reply, error", [
    (b"{this is not json", r"not JSON: \{this is not json"),
    (b'{"id": "x", "choices": []}', r"no choices\[0\]\.message\.content"),
    (b'{"choices": [{"message": {"content": null}}]}', r"no choices\[0\]\.message\.content"),
])
def test_a_malformed_reply_is_a_caption_error(fake, url, reply, error):
    fake.script = [(200, reply)]
    with pytest.raises(CaptionError, match=error):
        OpenAIServerCaptioner(url).caption(jpeg(), "p")
    assert len(fake.posts()) == 1


def test_an_unreachable_server_is_reported_at_construction():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CaptionError) as e:
        OpenAIServerCaptioner(f"http://127.0.0.1:{port}", model="named")  # checked even with a model
    assert str(e.value).startswith(f"no caption server at http://127.0.0.1:{port}/v1: connection refused "
                                   "— start llama-server")
    assert "check the URL" in str(e.value)


@pytest.mark.parametrize("bad", ["ftp://127.0.0.1/v1", "file:///etc/passwd", "127.0.0.1:8080", "http://", ""])
def test_a_non_http_url_is_refused(bad):
    with pytest.raises(CaptionError, match="must start with http:// or https://"):
        OpenAIServerCaptioner(bad)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/v1/chat/completions"])
def test_the_url_is_normalised(fake, url, suffix):
    cap = OpenAIServerCaptioner(url + suffix)
    assert cap.servers[0].url == f"{url}/v1/chat/completions"
    cap.caption(jpeg(), "p")
    assert [r["path"] for r in fake.requests] == ["/v1/models", "/v1/chat/completions"]


def test_api_base_keeps_a_path_prefix():
    assert api_base("https://gpu.example.com/proxy/v1/chat/completions") == "https://gpu.example.com/proxy/v1"
    assert api_base("http://localhost:11434") == "http://localhost:11434/v1"


def test_the_model_is_picked_from_the_server(fake, url):
    fake.models = ["Qwen2.5-VL-7B-Instruct-Q8_0.gguf", "other"]
    cap = OpenAIServerCaptioner(url)
    assert cap.servers[0].model == "Qwen2.5-VL-7B-Instruct-Q8_0.gguf"
    assert cap.name == f"openai:Qwen2.5-VL-7B-Instruct-Q8_0.gguf@127.0.0.1:{url.rsplit(':', 1)[1]}"
    cap.caption(jpeg(), "p")
    assert fake.posts()[0]["body"]["model"] == "Qwen2.5-VL-7B-Instruct-Q8_0.gguf"
    assert OpenAIServerCaptioner(url, model="chosen").servers[0].model == "chosen"


def test_a_server_with_no_models_needs_a_model_name(fake, url):
    fake.models = []
    with pytest.raises(CaptionError, match="lists no models: pass the model name"):
        OpenAIServerCaptioner(url)


def test_the_api_key_is_sent_as_a_bearer_token(fake, url, monkeypatch):
    OpenAIServerCaptioner(url, api_key="sk-given").caption(jpeg(), "p")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    OpenAIServerCaptioner(url).caption(jpeg(), "p")
    monkeypatch.setenv("LORA_LAB_CAPTION_API_KEY", "sk-lora-lab")  # ours wins over OpenAI's
    OpenAIServerCaptioner(url).caption(jpeg(), "p")
    sent = [r["headers"].get("Authorization") for r in fake.requests]
    assert sent == ["Bearer sk-given"] * 2 + ["Bearer sk-openai"] * 2 + ["Bearer sk-lora-lab"] * 2


def test_a_caption_job_through_the_server_saves_retried_answers_whole(fake, url, cli, ws, samples):
    cli("dataset", "ingest", samples, "--name", "shapes")
    out = json.loads(cli("caption", "shapes", "--server", url, "--max-tokens", "4",
                         "--mode", "overwrite", "--json")[1])
    assert (out["captioned"], out["retried"], out["truncated"], out["failed"]) == (8, 8, [], [])
    assert sorted(p["body"]["max_tokens"] for p in fake.posts()) == [4] * 8 + [8] * 8  # 4 in flight
    ds = Dataset.open("shapes", ws)
    assert all(ds.caption(f).endswith(("red", "green", "blue")) for f in ds.select())  # whole
    assert ds.images(truncated=True).total == 0
    assert open_job(out["job"], ws).view()["retried"] == 8


# -- several servers for one run ------------------------------------------------------------------
def shapes_items(n: int):
    """(key, image, expected answer) for n distinct images."""
    sizes = [(40 + i, 30 + 2 * i) for i in range(n)]
    return [(f"img{i}", jpeg(list(COLOURS)[i % 3], size),
             Answer(f"an image of {size[0]}x{size[1]} pixels, mostly {list(COLOURS)[i % 3]}"))
            for i, size in enumerate(sizes)]


def caption_all(cap: OpenAIServerCaptioner, items) -> dict:
    results = {}
    for key, answer in cap.caption_many((k, image, "p") for k, image, _ in items):
        assert key not in results
        results[key] = answer
    return results


def test_two_servers_share_a_run_each_with_its_own_slots(fake, fake2, url, url2):
    for state in (fake, fake2):
        state.delay, state.gate = 0.2, 2
    cap = OpenAIServerCaptioner([url, url2], concurrency=2)
    port, port2 = url.rsplit(":", 1)[1], url2.rsplit(":", 1)[1]
    assert cap.name == f"openai:tiny-vlm@127.0.0.1:{port},tiny-vlm@127.0.0.1:{port2}"
    items = shapes_items(12)
    assert caption_all(cap, items) == {k: answer for k, _, answer in items}
    assert (fake.max_in_flight, fake2.max_in_flight) == (2, 2)  # both full, neither over
    assert len(fake.posts()) + len(fake2.posts()) == 12


def test_a_faster_server_takes_more_images(fake, fake2, url, url2):
    fake.delay, fake2.delay = 0.01, 0.5
    cap = OpenAIServerCaptioner([url, url2], concurrency=1)
    items = shapes_items(16)
    assert caption_all(cap, items) == {k: answer for k, _, answer in items}
    assert 1 <= len(fake2.posts()) < len(fake.posts())


def test_a_failing_server_is_left_out_and_the_other_finishes_the_run(fake, fake2, url, url2):
    fake2.script = [(500, {"error": {"code": 500, "message": "slot crashed", "type": "server_error"}})] * 50
    fake.delay = 0.05  # the live server is busy when a new image comes: the failing one gets it
    notices = []
    cap = OpenAIServerCaptioner([url, url2], concurrency=2, retries=2, on_notice=notices.append)
    items = shapes_items(10)
    assert caption_all(cap, items) == {k: answer for k, _, answer in items}
    assert len(fake.posts()) == 10  # every image captioned once, on the live server
    assert 3 <= len(fake2.posts()) <= 4  # three failures in a row (two more were in flight at most)
    [notice] = notices
    assert notice.startswith(f"caption server at {url2}/v1 left out of this run after ")
    assert "slot crashed" in notice and notice.endswith(f"going on with {url}/v1")


def test_a_server_stopped_mid_run_is_left_out(fake, url):
    third = serve()
    url3 = f"http://127.0.0.1:{third.server_port}"
    third.state.delay = fake.delay = 0.05
    notices = []
    cap = OpenAIServerCaptioner([url3, url], concurrency=2, on_notice=notices.append)
    items, results = shapes_items(16), {}
    for key, answer in cap.caption_many((k, image, "p") for k, image, _ in items):
        results[key] = answer
        if len(results) == 3:
            stop(third)
    assert results == {k: answer for k, _, answer in items}
    assert len(fake.posts()) + len(third.state.posts()) >= 16
    assert len(notices) == 1 and f"no caption server at {url3}/v1" in notices[0]


def test_the_last_server_is_never_left_out(fake, url):
    fake.script = [(500, {"error": {"message": "busy"}})] * 6
    notices = []
    cap = OpenAIServerCaptioner(url, concurrency=1, retries=2, on_notice=notices.append)
    results = dict(cap.caption_many((i, jpeg(), "p") for i in range(3)))
    assert [isinstance(results[i], CaptionError) for i in range(3)] == [True, True, False]
    assert notices == []


def test_an_unreachable_second_server_is_refused_at_start_naming_it(fake, url):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CaptionError, match=f"^no caption server at http://127.0.0.1:{port}/v1: "
                                           "connection refused"):
        OpenAIServerCaptioner([url, f"http://127.0.0.1:{port}"])


@pytest.mark.parametrize("urls, error", [
    ([], "no caption server given"),
    (["http://127.0.0.1:1", "http://127.0.0.1:1/v1/"], "http://127.0.0.1:1/v1 is named twice"),
    (["http://127.0.0.1:1", 5], "must be text"),
])
def test_a_bad_server_list_is_refused_before_any_request(urls, error):
    with pytest.raises(CaptionError, match=error):
        OpenAIServerCaptioner(urls)


def test_a_caption_job_through_two_servers_saves_every_caption(fake, fake2, url, url2, cli, ws, samples):
    from test_jobs import ended, wait_until

    cli("dataset", "ingest", samples, "--name", "shapes")
    fake.delay = fake2.delay = 0.1
    out = json.loads(cli("jobs", "submit", "caption", "shapes", "--server", url, "--server", url2,
                         "--concurrency", "2", "--mode", "overwrite", "--json")[1])
    job = open_job(out["id"], ws)
    assert job.spec()["params"]["server"] == [url, url2]
    assert wait_until(job, ended)["state"] == "succeeded", job.log_path.read_text()
    ds = Dataset.open("shapes", ws)
    assert all(ds.caption(f).endswith(("red", "green", "blue")) for f in ds.select())
    assert len(fake.posts()) + len(fake2.posts()) == 8 and fake.posts() and fake2.posts()
    assert job.events()[-1]["captioned"] == 8


def test_the_cli_refuses_a_dead_or_doubled_server_before_a_job_exists(fake, url, cli, ws, samples):
    cli("dataset", "ingest", samples, "--name", "shapes")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    line = cli.fails("caption", "shapes", "--server", f"{url},{dead}")
    assert f"no caption server at {dead}/v1: connection refused" in line
    line = cli.fails("jobs", "submit", "caption", "shapes", "--server", url, "--server", url + "/v1")
    assert f"caption server {url}/v1 is named twice" in line
    assert not ws.jobs.exists() or list(ws.jobs.iterdir()) == []


def test_a_server_left_out_of_a_caption_job_is_in_its_events(fake, fake2, url, url2, cli, ws, samples):
    cli("dataset", "ingest", samples, "--name", "shapes")
    fake2.script = [(503, {"error": {"message": "Loading model"}})] * 2 + ["drop"] * 50
    fake.delay = 0.05
    out = json.loads(cli("caption", "shapes", "--server", f"{url},{url2}", "--concurrency", "1",
                         "--mode", "overwrite", "--json")[1])
    assert (out["captioned"], out["failed"]) == (8, [])
    assert len(fake.posts()) == 8
    job = open_job(out["job"], ws)
    [warning] = [e for e in job.events() if e["type"] == "log"]
    assert warning["level"] == "warning" and warning["message"].startswith(
        f"caption server at {url2}/v1 left out of this run after 3 failures in a row (")
