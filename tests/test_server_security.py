"""The server extension's guard rails, through HTTP: authentication on every route (found by
enumerating the registered routes, so a new unauthenticated one fails here), XSRF, path
traversal, symlinks, upload limits, zip-slip, bad JSON; plus the OpenAPI document matching the
routes, light start-up and the settings' environment fallbacks."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
import tornado.httpclient
import tornado.websocket
from conftest import jpeg_bytes, tree_digest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_api import jp_server_config, shapes, zip_bytes  # noqa: F401 (fixtures)
from traitlets import TraitError

from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord, open_job
from lora_lab.server_ext import LoraLabApp, _jupyter_server_extension_points
from lora_lab.server_ext.openapi import openapi_document
from lora_lab.server_ext.openapi_schemas import JOB_ID_PATTERN, NAME_PATTERN
from lora_lab.workspace import check_name

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ARGS = {"name": "shapes", "file": "red_circle.jpg", "job_id": "20260101-000000-train-abcdef",
               "path": "log.txt"}


@pytest.fixture
def fetch(http_server_client, jp_base_url, jp_serverapp):
    """A raw request (the path is sent exactly as given) with the token unless ``auth=False``."""
    token = jp_serverapp.identity_provider.token

    async def call(path, method="GET", body=None, headers=None, auth=True, **kwargs):
        headers = dict(headers or {})
        if auth:
            headers.setdefault("Authorization", f"token {token}")
        if body is None and method in ("POST", "PUT") and "body_producer" not in kwargs:
            body = b""
        return await http_server_client.fetch(jp_base_url + "lora-lab/api/" + path, method=method,
                                              body=body, headers=headers, raise_error=False,
                                              **kwargs)
    return call


def lora_routes(web_app, base_url):
    """(regex pattern, handler) of every registered lora_lab route."""
    prefix = re.escape(base_url) + "lora-lab/api/"
    found = []
    for router in (web_app.wildcard_router, web_app.default_router):
        for rule in router.rules:
            for sub in getattr(rule.target, "rules", [rule]):
                pattern = getattr(sub.matcher, "regex", None)
                if pattern is not None and pattern.pattern.startswith(prefix.replace("\\", "")):
                    found.append((pattern.pattern, sub.target))
    return found


def verbs(handler) -> list[str]:
    """The HTTP methods a handler implements (OPTIONS: CORS preflight, open by design)."""
    from tornado.web import RequestHandler

    return [m for m in handler.SUPPORTED_METHODS if m != "OPTIONS"
            and getattr(handler, m.lower()) is not RequestHandler._unimplemented_method]


def sample_path(pattern: str, base_url: str) -> str:
    """The route's URL path below lora-lab/api/, with sample values for its parameters."""
    path = pattern[len(base_url + "lora-lab/api/"):].rstrip("$").replace("\\.", ".")
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: SAMPLE_ARGS[m.group(1)], path)


def route_template(pattern: str, base_url: str) -> str:
    path = pattern[len(base_url + "lora-lab/api"):].rstrip("$").replace("\\.", ".")
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)


# -- authentication ---------------------------------------------------------------------------------
async def test_every_route_refuses_unauthenticated_requests(jp_serverapp, jp_base_url, fetch,
                                                            jp_http_port, shapes):
    routes = lora_routes(jp_serverapp.web_app, jp_base_url)
    assert len(routes) >= 18
    checked = []
    for pattern, handler in routes:
        path = sample_path(pattern, jp_base_url)
        if issubclass(handler, tornado.websocket.WebSocketHandler):
            url = f"ws://localhost:{jp_http_port}{jp_base_url}lora-lab/api/{path}"
            with pytest.raises(tornado.httpclient.HTTPClientError) as e:
                await tornado.websocket.websocket_connect(url)
            assert e.value.code == 403, path
            checked.append(("WS", path))
            continue
        for verb in verbs(handler):
            body = b"{}" if verb in ("POST", "PUT") else None
            r = await fetch(path, method=verb, body=body, auth=False)
            assert r.code == 403, (verb, path, r.code, r.body)
            checked.append((verb, path))
    assert ("PUT", "datasets/shapes/captions/red_circle.jpg") in checked
    assert ("WS", "jobs/20260101-000000-train-abcdef/stream") in checked
    # and the server's own check finds no undecorated method either
    for pattern, handler in routes:
        assert jp_serverapp.web_app._check_handler_auth(pattern, handler) == []


async def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(fetch, ws):
    r = await fetch("datasets?name=sneaky", method="POST", body=b"x" * 2**20, auth=False,
                    expect_100_continue=True)
    assert r.code == 403
    assert not (ws.datasets / "sneaky").exists() and not (ws.root / ".uploads").exists()


async def test_cookie_authenticated_writes_need_the_xsrf_token(fetch, shapes, ws):
    r = await fetch("health")
    login = SimpleCookie(r.headers["Set-Cookie"])
    cookie = "; ".join(f"{k}={m.value}" for k, m in login.items())
    assert (await fetch("health", auth=False, headers={"Cookie": cookie})).code == 200
    body = json.dumps({"caption": "forged"}).encode()
    path = "datasets/shapes/captions/red_circle.jpg"
    r = await fetch(path, method="PUT", body=body, auth=False, headers={"Cookie": cookie})
    assert r.code == 403
    r = await fetch("datasets/shapes/captions", method="POST", auth=False, headers={"Cookie": cookie},
                    body=json.dumps({"ops": [{"op": "prefix", "text": "x"}]}).encode())
    assert r.code == 403
    assert (ws.datasets / "shapes" / "red_circle.txt").read_text().strip() != "forged"
    # with the _xsrf cookie and the same token in the header, the cookie login may write
    xsrf = {"Cookie": f"{cookie}; _xsrf=abc123", "X-XSRFToken": "abc123"}
    r = await fetch(path, method="PUT", body=body, auth=False, headers=xsrf)
    assert r.code == 200, r.body


# -- traversal and symlinks -------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "datasets/%2e%2e", "datasets/%2e%2e/images", "datasets/..%2F..%2Fetc/images",
    "datasets/shapes/images/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.jpg",
    "datasets/shapes/images/..%2Fshapes%2Fred_circle.jpg",
    "datasets/shapes/images/%2Fetc%2Fpasswd", "datasets/shapes/captions/..%2F..%2Fsecret.txt",
    "datasets/shapes/captions/%2Ftmp%2Fsecret.jpg", "datasets/shapes/images/.lora_lab",
    "jobs/..%2F..%2Fdatasets", "jobs/%2e%2e/files/log.txt",
])
async def test_traversal_in_names_and_files_is_refused(fetch, shapes, ws, path):
    (ws.root.parent / "secret.jpg").write_bytes(b"TOPSECRET")
    r = await fetch(path)
    assert 400 <= r.code < 500 and b"TOPSECRET" not in r.body, (r.code, r.body)
    assert r.code != 403  # refused for what it names, not for a missing login
    assert set(json.loads(r.body)) == {"error", "detail"}


async def test_symlinks_pointing_out_of_the_workspace_are_refused(fetch, shapes, ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg_bytes(seed=9))
    (ws.datasets / "shapes" / "sneaky.jpg").symlink_to(outside / "secret.jpg")
    (ws.datasets / "linked").symlink_to(outside)
    for path in ["datasets/shapes/images/sneaky.jpg", "datasets/shapes/images/sneaky.jpg?thumb=64",
                 "datasets/shapes/captions/sneaky.jpg", "datasets/linked", "datasets/linked/images"]:
        r = await fetch(path)
        assert r.code == 400 and b"JFIF" not in r.body, (path, r.code, r.body)
        assert b"refused" in r.body
    r = await fetch("datasets", method="POST",
                    body=json.dumps({"name": "x", "source": str(outside)}).encode())
    assert r.code == 400 and b"outside the workspace" in r.body


async def test_a_caption_sidecar_symlinked_out_of_the_workspace_is_not_read(fetch, shapes, ws,
                                                                           tmp_path):
    (tmp_path / "secret.txt").write_text("TOPSECRET")
    (ws.datasets / "shapes" / "purple_square.txt").symlink_to(tmp_path / "secret.txt")
    for path in ["datasets/shapes/captions/purple_square.jpg", "datasets/shapes/images"]:
        r = await fetch(path)
        assert b"TOPSECRET" not in r.body, path


async def test_job_files_stay_inside_the_job_folder(fetch, shapes, ws):
    job = JobRecord.create("train", {}, ws)
    job.log_path.write_text("step 1\n")
    (job.path / "samples").mkdir()
    (job.path / "samples" / "out.png").write_bytes(b"\x89PNG fake")
    (job.path / "escape.txt").symlink_to(ws.datasets / "shapes" / "red_circle.txt")
    r = await fetch(f"jobs/{job.id}/files/log.txt")
    assert r.code == 200 and r.body == b"step 1\n" and r.headers["Content-Type"].startswith("text/plain")
    r = await fetch(f"jobs/{job.id}/files/samples/out.png")
    assert r.code == 200 and r.headers["Content-Type"] == "image/png"
    listing = json.loads((await fetch(f"jobs/{job.id}/files")).body)["files"]
    assert {"log.txt", "samples/out.png", "spec.json"} <= {f["path"] for f in listing}
    assert "escape.txt" not in {f["path"] for f in listing}
    for bad in ["..%2F..%2Fdatasets%2Fshapes%2Fred_circle.txt", "../../datasets/shapes/red_circle.txt",
                "%2Fetc%2Fpasswd", "escape.txt", "samples%2F..%2F..%2F..%2Fdatasets"]:
        r = await fetch(f"jobs/{job.id}/files/{bad}")
        assert r.code in (400, 404) and b"red circle" not in r.body, (bad, r.code, r.body)
    assert (await fetch(f"jobs/{job.id}/files/nope.bin")).code == 404


# -- uploads ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("jp_server_config", [{"max_upload_mb": 1}], indirect=True)
async def test_an_upload_over_the_limit_gets_413_and_stores_nothing(fetch, ws):
    big = b"\0" * (3 * 2**20)
    r = await fetch("datasets?name=big", method="POST", body=big, expect_100_continue=True)
    assert r.code == 413 and b"1 MiB" in r.body
    # no Content-Length (chunked): refused as the bytes pass the limit, the connection closed

    async def produce(write):
        for _ in range(48):
            await write(b"\0" * 2**16)
    r = await fetch("datasets?name=big", method="POST", body_producer=produce)
    assert r.code in (413, 599), r.code
    assert not (ws.datasets / "big").exists()
    assert list((ws.root / ".uploads").iterdir()) == []
    r = await fetch("health")
    assert json.loads(r.body)["max_upload_mb"] == 1


async def test_a_zip_slip_upload_writes_nothing_outside_its_dataset(fetch, ws, tmp_path):
    before = tree_digest(tmp_path)
    body = zip_bytes({"../../evil.jpg": jpeg_bytes(seed=1), "/abs/evil2.jpg": jpeg_bytes(seed=2),
                      "sub/../../../evil3.jpg": jpeg_bytes(seed=3), "ok.jpg": jpeg_bytes(seed=4)})
    r = await fetch("datasets?name=slip", method="POST", body=body)
    assert r.code == 201, r.body
    report = json.loads(r.body)
    assert [a["file"] for a in report["added"]] == ["ok.jpg"]
    assert all("unsafe path" in s["reason"] for s in report["skipped"])
    after = tree_digest(tmp_path)
    changed = {p for p in set(after) | set(before) if before.get(p) != after.get(p)}
    assert changed and all(p.startswith("ws/datasets/slip/") for p in changed), changed


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path, body, message", [
    ("POST", "datasets", b"{not json", "not valid JSON"),
    ("POST", "datasets", b"[1, 2]", "must be a JSON object"),
    ("POST", "datasets", b'{"name": "x"}', "needs 'source'"),
    ("POST", "datasets", b'{"name": "../x", "source": "datasets"}', "invalid dataset name"),
    ("PUT", "datasets/shapes/captions/red_circle.jpg", b"\xff\xfe", "not valid JSON"),
    ("POST", "datasets/shapes/captions", b'{"ops": "prefix"}', "ops must be a list"),
    ("POST", "jobs", b"{", "not valid JSON"),
    ("POST", "jobs", b'{"kind": "bake", "params": {}}', "unknown job kind 'bake'"),
    ("POST", "jobs", b'{"kind": "caption", "params": {"dataset": "nope"}}', "does not exist"),
    ("POST", "caption", b'{"dataset": "shapes"}', "needs 'file'"),
    ("POST", "caption", b'{"dataset": "shapes", "file": "red_circle.jpg", "mode": "shout"}',
     "unknown caption mode"),
    ("POST", "datasets?name=bad%2Fname", b"PK", "invalid dataset name"),
    ("POST", "datasets?name=ghost&add=1", b"PK", "does not exist"),
    ("POST", "datasets?name=empty", b"", "not a readable zip"),
])
async def test_bad_requests_get_a_4xx_with_a_message(fetch, shapes, method, path, body, message):
    r = await fetch(path, method=method, body=body)
    err = json.loads(r.body)
    assert 400 <= r.code < 500 and message in err["detail"], (r.code, err)


# -- OpenAPI, start-up, settings --------------------------------------------------------------------
async def test_openapi_lists_exactly_the_registered_routes(fetch, jp_serverapp, jp_base_url):
    doc = json.loads((await fetch("openapi.json")).body)
    assert doc["openapi"].startswith("3.") and doc["servers"][0]["url"] == "/a%40b/lora-lab/api"
    documented = {(path, verb.upper()) for path, ops in doc["paths"].items() for verb in ops}
    registered = {(route_template(pattern, jp_base_url), verb)
                  for pattern, handler in lora_routes(jp_serverapp.web_app, jp_base_url)
                  for verb in verbs(handler)}
    assert documented == registered
    assert openapi_document("/")["servers"][0]["url"] == "/lora-lab/api"


@settings(max_examples=400, deadline=None, database=None)
@given(st.text(max_size=110) | st.from_regex(NAME_PATTERN))
def test_the_documented_name_pattern_is_the_servers_rule(name):
    try:
        check_name(name)
        accepted = True
    except LoraLabError:
        accepted = False
    assert accepted == (re.search(NAME_PATTERN, name) is not None and len(name.encode()) <= 255)


def test_the_documented_job_id_pattern_is_the_servers_rule(ws):
    job = JobRecord.create("train", {}, ws)
    assert re.search(JOB_ID_PATTERN, job.id)
    for bad in ("20260101-000000-train-abcde", "x20260101-000000-train-abcdef", job.id + "\n"):
        assert not re.search(JOB_ID_PATTERN, bad)
        with pytest.raises(LoraLabError):
            open_job(bad, ws)


def test_the_extension_is_declared_and_auto_enabled():
    assert _jupyter_server_extension_points() == [{"module": "lora_lab.server_ext", "app": LoraLabApp}]
    assert LoraLabApp.name == "lora_lab"
    config = json.loads((REPO / "jupyter-config/server-config/lora_lab.json").read_text())
    assert config == {"ServerApp": {"jpserver_extensions": {"lora_lab.server_ext": True}}}
    for trait in ("workspace", "caption_model", "caption_mmproj", "max_upload_mb", "gpu_slots",
                  "allowed_caption_servers", "ingest_roots"):
        assert LoraLabApp.class_traits()[trait].help, trait


def test_loading_the_extension_imports_no_ml_library(tmp_path):
    code = f"""
import sys
from jupyter_server.serverapp import ServerApp
app = ServerApp()
app.initialize(argv=["--ServerApp.jpserver_extensions={{'lora_lab.server_ext': True}}",
                     "--LoraLabApp.workspace={tmp_path / 'ws'}", "--ServerApp.root_dir={tmp_path}",
                     "--ServerApp.port=0"], new_httpserver=False)
lab = app.extension_manager.extension_points["lora_lab"].app
assert lab.services.ws.root.name == "ws" and "lora_lab.server_ext.stream" in sys.modules
assert app.web_app.settings["lora_lab_services"] is lab.services
heavy = [m for m in ("torch", "diffusers", "transformers", "llama_cpp", "peft") if m in sys.modules]
print("HEAVY", heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                              "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")})
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_settings_fall_back_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORA_LAB_CAPTION_MODEL", "/models/m.gguf")
    monkeypatch.setenv("LORA_LAB_CAPTION_MMPROJ", "/models/p.gguf")
    monkeypatch.setenv("LORA_LAB_MAX_UPLOAD_MB", "10")
    monkeypatch.setenv("LORA_LAB_GPU_SLOTS", "2")
    monkeypatch.setenv("LORA_LAB_ALLOWED_CAPTION_SERVERS", "http://127.0.0.1:8080, https://cap.lan/v1")
    monkeypatch.setenv("LORA_LAB_INGEST_ROOTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    app = LoraLabApp()
    assert (app.workspace, app.caption_model, app.caption_mmproj) == (
        str(tmp_path / "home"), "/models/m.gguf", "/models/p.gguf")
    assert (app.max_upload_mb, app.gpu_slots) == (10, 2)
    assert app.allowed_caption_servers == ["http://127.0.0.1:8080", "https://cap.lan/v1"]
    assert app.ingest_roots == [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(TraitError, match="allowed_caption_servers"):
        LoraLabApp(allowed_caption_servers=["127.0.0.1:8080"])
    with pytest.raises(TraitError, match="absolute path"):
        LoraLabApp(ingest_roots=["relative/folder"])
    assert LoraLabApp(gpu_slots=3).gpu_slots == 3  # config wins over the environment
    monkeypatch.setenv("LORA_LAB_GPU_SLOTS", "two")
    with pytest.raises(TraitError, match="LORA_LAB_GPU_SLOTS"):
        _ = LoraLabApp().gpu_slots  # reading it runs the environment fallback
    with pytest.raises(TraitError, match="at least 1"):
        LoraLabApp(max_upload_mb=0)
