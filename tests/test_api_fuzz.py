"""The REST API against its own OpenAPI document, by a property-based fuzzer (schemathesis)
driving a real `jupyter server` with the extension: no 5xx, no schema-valid request refused,
no status code the document does not list, responses as documented, and every method a route
lacks answered 405 with an Allow header.

The workspace (a temporary one, the fuzzer's own) holds one dataset, one finished job and the
tiny caption model, and the test adds them to the document as examples, so the fuzzer reaches
past the 404s. No job is ever started: a job submission can only succeed naming what exists, and
those naming the one dataset are not sent (see starts_a_job); the server fixture checks that no
job folder appeared. A DELETE of the finished job does delete it: it is made again afterwards.
"""
from __future__ import annotations

import copy
import http.client
import io
import json
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import schemathesis
from conftest import bare_env, jpeg_bytes
from hypothesis import strategies as st

from lora_lab import Workspace
from lora_lab.datasets import ingest
from lora_lab.jobdir import JobRecord
from lora_lab.server_ext.openapi import openapi_document
from lora_lab.tiny import gguf_models
from lora_lab.tiny.samples import write_samples

pytestmark = pytest.mark.slow
TOKEN = "fuzz-test"
JOB_ID = "20260101-000000000-train-abcdef"
EXAMPLES = {"name": "shapes", "file": "red_circle.jpg", "job_id": JOB_ID, "path": "log.txt"}


@st.composite
def zips(draw) -> bytes:
    """An application/zip body as the route takes it: a zip holding at least one image, maybe
    with captions and files that are not images (skipped, and reported as such)."""
    seeds = draw(st.lists(st.integers(0, 9), min_size=1, max_size=3))
    extras = draw(st.dictionaries(st.from_regex(r"[a-z0-9]{1,8}\.(jpg|png|txt|bin)", fullmatch=True),
                                  st.binary(max_size=64), max_size=3))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, seed in enumerate(seeds):
            zf.writestr(f"image-{i}.jpg", jpeg_bytes(seed=seed))
        for name, data in extras.items():
            zf.writestr(name, data)
    return buf.getvalue()


schemathesis.openapi.media_type("application/zip", zips())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A jupyter server on 127.0.0.1 with the extension on a fresh workspace: (API URL, ws).
    Afterwards, no job but the example may exist: fuzzing must never have started one."""
    root = tmp_path_factory.mktemp("fuzz")
    ws = Workspace(root / "ws")
    ingest(write_samples(root / "samples"), "shapes", workspace=ws)
    example_job(ws)
    model, mmproj = gguf_models.write_caption_pair(ws.models / "caption")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("jupyter-server")), f"--port={port}",
           "--ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", "--no-browser", "--allow-root",
           f"--ServerApp.root_dir={root}", '--ServerApp.jpserver_extensions={"lora_lab.server_ext": True}',
           f"--LoraLabApp.workspace={ws.root}", f"--LoraLabApp.caption_model={model}",
           f"--LoraLabApp.caption_mmproj={mmproj}"]
    env = bare_env(HOME=str(root), PATH="/usr/bin:/bin", HF_HUB_OFFLINE="1",
                   JUPYTER_CONFIG_DIR=str(root / "cfg"), JUPYTER_DATA_DIR=str(root / "data"),
                   JUPYTER_RUNTIME_DIR=str(root / "run"))
    log = open(root / "server.log", "wb")  # a pipe nobody reads would fill and stall the server
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        _wait_until_up(port, proc, root / "server.log")
        yield f"http://127.0.0.1:{port}/lora-lab/api", ws
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert [p.name for p in ws.jobs.iterdir()] == [JOB_ID]


def example_job(ws: Workspace) -> None:
    """The finished job the document names as its example."""
    job = JobRecord(ws.jobs / JOB_ID)
    job.path.mkdir(parents=True)
    (job.path / "spec.json").write_text(json.dumps({"kind": "train", "params": {}}))
    job.log_path.write_text("step 1\n")
    job.set_status("succeeded", pid=None)


def _wait_until_up(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server did not start"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/lora-lab/api/health", headers={"Authorization": f"token {TOKEN}"})
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)


def with_examples(doc: dict) -> dict:
    """The document with the workspace's own dataset, image and job as examples."""
    doc = copy.deepcopy(doc)
    for ops in doc["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] in EXAMPLES:
                    param["example"] = EXAMPLES[param["name"]]
    caption = doc["paths"]["/caption"]["post"]["requestBody"]["content"]["application/json"]
    caption["example"] = {"dataset": "shapes", "file": "red_circle.jpg", "preset": "short"}
    return doc


CONFIG = schemathesis.Config.from_dict({
    "headers": {"Authorization": f"token {TOKEN}"},
    "request-timeout": 60,
    "generation": {"max-examples": 25, "database": "none"},
    # names the server answers with are not fed back into requests: a job could then start
    "phases": {"examples": {"fill-missing": True}, "stateful": {"enabled": False},
               "fuzzing": {"extra-data-sources": {"responses": False}},
               "coverage": {"extra-data-sources": {"responses": False}}},
    # a plain HTTP client cannot open a WebSocket (the job stream, the workspace feed): its GET
    # is a 400 (documented) by design
    "operations": [{"include-path-regex": "/stream$",
                    "checks": {"positive_data_acceptance": {"enabled": False}}},
                   # the fuzz server is offline (HF_HUB_OFFLINE): every pull is refused with its
                   # documented 400 or 404 before a job exists (503 when it asks for Ray, below)
                   {"include-path-regex": "/models/pull$",
                    "checks": {"positive_data_acceptance": {"enabled": False},
                               "not_a_server_error": {
                                   "expected-statuses": ["2xx", "3xx", "4xx", "503"]}}},
                   # nor has it a Ray cluster: a job that asks for one finds none (503, the
                   # documented answer; a 500 still fails)
                   {"include-path-regex": "^/jobs$", "include-method": "POST",
                    "checks": {"positive_data_acceptance": {
                                   "expected-statuses": ["2xx", "401", "403", "404", "409", "503"]},
                               "not_a_server_error": {
                                   "expected-statuses": ["2xx", "3xx", "4xx", "503"]}}}],
    "checks": {
        # every request carries the token (the header above), so this check's forged _xsrf cookie
        # still comes with a valid login; test_server_security sends every route without one
        "ignored_auth": {"enabled": False},
        # a stale If-Match is refused by design (412), as the document says for that route
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "412"]},
    },
})
# The document the server serves (checked below), with the fuzz workspace's examples
schema = schemathesis.openapi.from_dict(with_examples(openapi_document("/")), config=CONFIG)


def test_the_fuzzed_document_is_the_one_served(server):
    conn = http.client.HTTPConnection(server[0].split("/")[2], timeout=30)
    conn.request("GET", "/lora-lab/api/openapi.json", headers={"Authorization": f"token {TOKEN}"})
    assert json.loads(conn.getresponse().read()) == openapi_document("/")


def starts_a_job(case, ws: Workspace) -> bool:
    """Whether ``case`` submits a job naming a dataset or a path that exists (the fuzzer makes
    datasets too, by upload): that would pass and start a real job, so that one success path
    is left out; every other job submission is sent."""
    if (case.method, case.operation.path) != ("POST", "/jobs"):
        return False
    names = {p.name for p in ws.datasets.iterdir()}
    return any(v in names or _exists(ws.root / v) for v in _strings(case.body) if v)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict | list):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _strings(item)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, or with a NUL
        return False


def on_the_cluster(case) -> None:
    """A caption job over several GPUs runs on a Ray cluster only, a rule across two fields that
    the document states in words: such a case is sent asking for Ray, so it is answered as one
    (the fuzz server has no cluster: 503) rather than refused for that rule (400)."""
    body = case.body
    if (case.method, case.operation.path) == ("POST", "/jobs") and isinstance(body, dict) and \
            body.get("kind") == "caption" and isinstance(body.get("params"), dict) and \
            isinstance(body["params"].get("gpus"), int) and body["params"]["gpus"] > 1:
        body["executor"] = "ray"


@schema.parametrize()
def test_the_api_keeps_its_contract(case, server):
    url, ws = server
    on_the_cluster(case)
    if not starts_a_job(case, ws):
        case.call_and_validate(base_url=url)
    if not (ws.jobs / JOB_ID).exists():  # deleted by DELETE jobs/{job_id}, as it should be
        assert (case.method, case.operation.path) == ("DELETE", "/jobs/{job_id}")
        example_job(ws)
