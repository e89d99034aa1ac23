"""A caption engine that asks OpenAI-compatible servers: llama.cpp's ``llama-server``, vLLM,
LM Studio, Ollama's ``/v1``.

Big batches go faster with several requests in flight: the server batches them on the GPU
(``llama-server -np N`` splits its context into N parallel slots). Several servers share one
run: each has ``concurrency`` slots, an image goes to whichever has a free one (so a faster
server takes more), a request a server fails is retried on another, and a server that keeps
failing is left out while the others finish the run. Only the standard library is used, so this
engine costs nothing to import and needs no extra package.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from .base import Answer, CaptionError, data_uri, whole_answer

K = TypeVar("K")

BACKOFF_S = 0.5  # wait before the first retry on the same server; doubles with each further one
PROBE_TIMEOUT_S = 10.0  # the /models check at start-up: a live server answers it at once
START_HINT = ("start llama-server (llama-server -m MODEL.gguf --mmproj MMPROJ.gguf --port 8080 -np 4) "
              "or check the URL")


class _ServerFault(CaptionError):
    """A failure of the server, not of the image: worth trying on another server."""


class _Transient(_ServerFault):
    """The server was busy or dropped the connection: worth retrying, even on the same one."""


class _Down(_ServerFault):
    """Nothing answers at the server's address."""


def api_base(url: str) -> str:
    """``http://host:port``, ``.../v1`` or ``.../v1/chat/completions`` -> ``http://host:port/v1``."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CaptionError(f"caption server URL must start with http:// or https:// "
                           f"(e.g. http://127.0.0.1:8080), got {url!r}")
    path = parts.path.rstrip("/").removesuffix("/chat/completions")
    if not path.endswith("/v1"):
        path += "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def server_urls(urls: str | Sequence[str]) -> list[str]:
    """One URL or several -> their API bases, refusing none, a bad one or one given twice."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise CaptionError("no caption server given: name at least one URL")
    if not all(isinstance(u, str) for u in urls):
        raise CaptionError(f"caption server URLs must be text, got {urls!r}")
    bases = [api_base(u) for u in urls]
    for i, base in enumerate(bases):
        if base in bases[:i]:
            raise CaptionError(f"caption server {base} is named twice; name each server once")
    return bases


class _Server:
    """One server of a run: where it is, its model, its slots in use and its failures in a row
    (the captioner's lock guards ``busy``, ``strikes`` and ``live``)."""

    def __init__(self, base: str, headers: dict[str, str], timeout: float, concurrency: int):
        self.base, self.headers, self.timeout, self.concurrency = base, headers, timeout, concurrency
        self.url = base + "/chat/completions"
        self.netloc = urllib.parse.urlsplit(base).netloc
        self.model = ""
        self.busy = self.strikes = 0
        self.live = True

    def probe(self, model: str | None, retries: int) -> None:
        """Prove, now rather than mid-batch, that the server is there, and pick its model
        (llama-server lists its ``--alias`` or the GGUF file name)."""
        models = self._models(retries)
        if model is None and not models:
            raise CaptionError(f"caption server at {self.base} lists no models: pass the model name")
        self.model = model or models[0]

    def _models(self, retries: int) -> list[str]:
        for attempt in itertools.count():
            try:
                reply = self.call("/models", timeout=min(self.timeout, PROBE_TIMEOUT_S))
                break
            except _Transient as e:
                if attempt >= retries:
                    raise CaptionError(_tried(e, attempt)) from None
                time.sleep(BACKOFF_S * 2 ** attempt)
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list):
            raise CaptionError(f"caption server at {self.base} sent no model list from /models: "
                               f"{_snippet(reply)}")
        return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]

    def generate(self, image: bytes, prompt: str, max_tokens: int,
                 temperature: float) -> tuple[str, str | None]:
        reply = self.call("/chat/completions", {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_uri(image)}},
                {"type": "text", "text": prompt},
            ]}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        })
        try:
            choice = reply["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise CaptionError(f"caption server at {self.base} sent no choices[0].message.content: "
                               f"{_snippet(reply)}")
        return content, choice.get("finish_reason")

    def call(self, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """One request; the decoded JSON reply."""
        timeout = timeout or self.timeout
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._connection_error(e, timeout) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise CaptionError(f"caption server at {self.base} sent a reply that is not JSON: "
                               f"{_snippet(raw)}") from None

    def _http_error(self, e: urllib.error.HTTPError) -> CaptionError:
        message = f"caption server at {self.base} answered HTTP {e.code}: {_server_message(e)}"
        if e.code in (401, 403):
            message += " (set the API key: $LORA_LAB_CAPTION_API_KEY or api_key=)"
        # 5xx: a crashed slot or a model still loading; 429: the server's queue is full.
        return _Transient(message) if e.code == 429 or e.code >= 500 else CaptionError(message)

    def _connection_error(self, e: OSError | http.client.HTTPException, timeout: float) -> CaptionError:
        # urlopen wraps errors raised while connecting and sending in URLError; errors while
        # waiting for the answer come bare.
        cause = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(cause, TimeoutError):  # not retried: a stuck generation would stick again
            return CaptionError(f"caption server at {self.base} did not answer within {timeout:g} s "
                                f"(raise the timeout for slow models or long captions)")
        if isinstance(cause, ConnectionError) and not isinstance(cause, ConnectionRefusedError):
            return _Transient(f"caption server at {self.base} dropped the connection ({_describe(cause)})")
        if isinstance(e, urllib.error.URLError):
            return _Down(f"no caption server at {self.base}: {_describe(cause)} — {START_HINT}")
        return CaptionError(f"caption server at {self.base} failed: {_describe(cause)}")


class OpenAIServerCaptioner:
    """Captions through ``POST /v1/chat/completions`` on one server or several; ``caption`` is
    thread-safe (slots are counted under a lock).

    ``on_notice`` hears of a server left out mid-run: after ``retries`` + 1 failures in a row,
    while another server is still live (the last one is never left out).
    """

    def __init__(self, url: str | Sequence[str], *, model: str | None = None,
                 api_key: str | None = None, concurrency: int = 4, timeout: float = 120.0,
                 max_tokens: int = 300, temperature: float = 0.2, retries: int = 2,
                 on_notice: Callable[[str], None] | None = None):
        if concurrency < 1 or timeout <= 0 or retries < 0:
            raise CaptionError(f"caption server: concurrency must be >= 1 (got {concurrency}), "
                               f"timeout > 0 (got {timeout}), retries >= 0 (got {retries})")
        self.concurrency, self.retries = concurrency, retries
        self.max_tokens, self.temperature = max_tokens, temperature
        headers = _headers(api_key)
        self.servers = [_Server(base, headers, timeout, concurrency) for base in server_urls(url)]
        _probe_all(self.servers, model, retries)
        self.name = "openai:" + ",".join(f"{s.model}@{s.netloc}" for s in self.servers)
        self._on_notice = on_notice or (lambda message: None)
        self._lock = threading.Condition()

    def caption(self, image: bytes, prompt: str) -> Answer:
        """One prepared JPEG and prompt -> the model's raw answer, asked again with a larger
        limit when ``max_tokens`` cut it (``finish_reason`` "length"). A server's failure is
        tried again, on a server this image has not failed on when one is live."""
        tried: list[_Server] = []
        attempt = 0
        while True:
            server = self._acquire(tried)
            try:
                return self._ask(server, image, prompt)
            except _ServerFault as e:
                tried.append(server)
                if attempt >= self.retries or not (isinstance(e, _Transient) or self._untried(tried)):
                    raise CaptionError(_tried(e, attempt)) from None
            if not self._untried(tried):  # only servers that failed it are left: give them time
                time.sleep(BACKOFF_S * 2 ** attempt)
            attempt += 1

    def _ask(self, server: _Server, image: bytes, prompt: str) -> Answer:
        """One try on ``server``, in the slot taken for it."""
        fault = None
        try:
            return whole_answer(lambda limit: server.generate(image, prompt, limit, self.temperature),
                                self.max_tokens)
        except _ServerFault as e:
            fault = e
            raise
        finally:
            self._release(server, fault)

    def _acquire(self, tried: list[_Server]) -> _Server:
        """A free slot, the least busy server first, on a live server the image has not failed
        on if there is one; waits while every such slot is taken."""
        with self._lock:
            while True:
                live = [s for s in self.servers if s.live]
                free = [s for s in ([s for s in live if s not in tried] or live)
                        if s.busy < s.concurrency]
                if free:
                    server = min(free, key=lambda s: s.busy)
                    server.busy += 1
                    return server
                self._lock.wait()

    def _release(self, server: _Server, fault: CaptionError | None) -> None:
        with self._lock:
            server.busy -= 1
            server.strikes = server.strikes + 1 if fault else 0
            others = [s.base for s in self.servers if s.live and s is not server]
            left_out = bool(fault and server.live and others and server.strikes > self.retries)
            server.live = server.live and not left_out
            self._lock.notify_all()
        if left_out:  # the notice goes out of the lock: it may write to the job's events
            self._on_notice(f"caption server at {server.base} left out of this run after "
                            f"{server.strikes} failures in a row ({fault}); going on with "
                            f"{', '.join(others)}")

    def _untried(self, tried: list[_Server]) -> bool:
        with self._lock:
            return any(s.live and s not in tried for s in self.servers)

    def _slots(self) -> int:
        with self._lock:
            return sum(s.concurrency for s in self.servers if s.live)

    def caption_many(self, items: Iterable[tuple[K, bytes, str]]) -> Iterator[tuple[K, Answer | CaptionError]]:
        """Caption ``(key, image, prompt)`` items with up to ``concurrency`` requests in flight
        per server.

        Results come as they complete, in any order, each with its key; a failed item comes back
        as its ``CaptionError`` so the batch goes on. ``items`` is read lazily, only as far as
        free slots reach, so a generator that prepares images never runs far ahead.
        """
        source = iter(items)
        pending: dict[Future[Answer], K] = {}
        pool = ThreadPoolExecutor(self._slots(), thread_name_prefix="lora-lab-caption")
        try:
            self._fill(pool, source, pending)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                finished = [(pending.pop(f), _outcome(f)) for f in done]
                self._fill(pool, source, pending)  # keep the servers busy while the caller works
                yield from finished
        finally:  # also when the caller stops early: drop what has not started
            pool.shutdown(wait=False, cancel_futures=True)

    def _fill(self, pool: ThreadPoolExecutor, source: Iterator[tuple[K, bytes, str]],
              pending: dict[Future[Answer], K]) -> None:
        for key, image, prompt in itertools.islice(source, max(0, self._slots() - len(pending))):
            pending[pool.submit(self.caption, image, prompt)] = key

    def close(self) -> None:
        """Nothing to free: each request opens and closes its own connection."""


def _headers(api_key: str | None) -> dict[str, str]:
    if api_key is None:
        api_key = os.environ.get("LORA_LAB_CAPTION_API_KEY") or os.environ.get("OPENAI_API_KEY")
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "User-Agent": "lora-lab"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _probe_all(servers: list[_Server], model: str | None, retries: int) -> None:
    """Every server probed at once (a run waits for the slowest, not the sum); the first that
    fails, in the order given, is named."""
    with ThreadPoolExecutor(len(servers), thread_name_prefix="lora-lab-probe") as pool:
        for future in [pool.submit(s.probe, model, retries) for s in servers]:
            future.result()


def _tried(error: CaptionError, attempt: int) -> str:
    return f"{error} (tried {attempt + 1} times)" if attempt else str(error)


def _outcome(future: Future[Answer]) -> Answer | CaptionError:
    try:
        return future.result()
    except CaptionError as e:
        return e


def _server_message(e: urllib.error.HTTPError) -> str:
    """The server's own words: ``{"error": {"message": ..}}`` (llama-server, Ollama, OpenAI),
    ``{"error": ".."}`` or ``{"message": ..}`` (older vLLM), else the body's start."""
    try:
        raw = e.read()
    except (OSError, http.client.HTTPException):
        return e.reason or "no details"
    try:
        reply = json.loads(raw)
    except ValueError:
        return _snippet(raw) if raw.strip() else str(e.reason)
    error = reply.get("error", reply) if isinstance(reply, dict) else reply
    if isinstance(error, dict) and "message" in error:
        error = error["message"]
    return error if isinstance(error, str) else _snippet(error)


def _describe(cause: BaseException | str) -> str:
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()  # "connection refused", "name or service not known"
    return str(cause) or type(cause).__name__


def _snippet(value: Any, limit: int = 200) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else (
        value if isinstance(value, str) else json.dumps(value))
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"
