"""Confinement over REST, through HTTP: every path in a submitted job resolves inside the
workspace, the caption API key goes only to allowed caption servers, ingest reads only from the
workspace and the listed roots. Each refusal is a 400 before a job record exists; plus the
rules themselves (lora_lab.confine) on their edge cases, and 405s with an Allow header."""
from __future__ import annotations

import json
import shutil

import pytest
from server_api import server_config, shapes, workspace_models  # noqa: F401 (fixture)

from lora_lab.confine import HUB_ID, caption_server_allowed, ingest_source, train_config
from lora_lab.errors import LoraLabError, NotFound
from lora_lab.jobdir import JobRecord

API = ("lora-lab", "api")


@pytest.fixture
def roots(tmp_path):
    return tmp_path / "incoming"


@pytest.fixture
def jp_server_config(ws, roots, request):
    """One ingest root outside the workspace; parametrize (indirect) for more settings."""
    return server_config(ws, ingest_roots=[str(roots)], **getattr(request, "param", {}))


@pytest.fixture
def api(jp_fetch):
    async def call(*path, method="GET", body=None, **kwargs):
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        r = await jp_fetch(*API, *path, method=method, body=data, raise_error=False,
                           headers=headers, **kwargs)
        is_json = r.headers.get("Content-Type", "").startswith("application/json")
        return r.code, json.loads(r.body) if is_json else r.body, r.headers
    return call


def submitted(ws) -> list:
    return list(ws.jobs.iterdir())


def train(model: dict | None = None, dataset: dict | None = None, save: dict | None = None) -> dict:
    config = {"model": {"base": "models/sd15", **(model or {})},
              "dataset": {"source": "samples", "resolution": 64, **(dataset or {})},
              "train": {"max_steps": 1}, "save": save or {}}
    return {"kind": "train", "params": {"config": config}}


# -- training jobs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model, dataset, save, field", [
    ({}, {}, {"output_dir": "/etc"}, "save.output_dir"),
    ({}, {}, {"output_dir": "../outside"}, "save.output_dir"),
    ({}, {}, {"output_dir": "~/loras"}, "save.output_dir"),
    ({"base": "/usr"}, {}, {}, "model.base"),
    ({"vae": "../../vae"}, {}, {}, "model.vae"),
    ({"config": "/etc"}, {}, {}, "model.config"),
    ({}, {"source": "/tmp"}, {}, "dataset.source"),
    ({}, {"source": "../samples"}, {}, "dataset.source"),
])
async def test_a_train_job_naming_a_path_outside_the_workspace_is_refused(
        api, ws, tiny_models, model, dataset, save, field):
    workspace_models(ws, tiny_models)
    code, err, _ = await api("jobs", method="POST", body=train(model, dataset, save))
    assert code == 400, err
    assert err["detail"].startswith(field)
    assert "outside the workspace" in err["detail"] or "home folder" in err["detail"]
    assert submitted(ws) == []  # refused before a job record exists


async def test_a_symlink_out_of_the_workspace_is_refused_like_the_path_it_points_to(
        api, ws, tiny_models, tmp_path):
    workspace_models(ws, tiny_models)
    (ws.models / "elsewhere").symlink_to(tiny_models["sd15"])  # a real model, outside
    code, err, _ = await api("jobs", method="POST", body=train({"base": "models/elsewhere"}))
    assert code == 400 and "model.base" in err["detail"] and "outside" in err["detail"]
    assert submitted(ws) == []


async def test_missing_paths_in_a_train_job_are_404(api, ws, tiny_models):
    workspace_models(ws, tiny_models)
    code, err, _ = await api("jobs", method="POST", body=train({"base": "models/nope/x.safetensors"}))
    assert code == 404 and "model.base" in err["detail"]
    code, err, _ = await api("jobs", method="POST", body=train(dataset={"source": "no-such-dataset"}))
    assert code == 404 and "dataset.source" in err["detail"]
    assert submitted(ws) == []


def test_train_paths_are_made_absolute_in_the_workspace_and_hub_ids_stay(ws, tiny_models):
    workspace_models(ws, tiny_models)
    out = train_config({"model": {"base": "stabilityai/stable-diffusion-xl-base-1.0", "vae": "",
                                  "config": "models/sd15"},
                        "dataset": {"source": "samples"}, "save": {"output_dir": "loras/mine"}}, ws)
    assert out["model"] == {"base": "stabilityai/stable-diffusion-xl-base-1.0", "vae": "",
                            "config": str(ws.models / "sd15")}
    assert out["dataset"]["source"] == str(ws.root / "samples")
    assert out["save"]["output_dir"] == str(ws.loras / "mine")
    (ws.datasets / "cats").mkdir()
    assert train_config({"dataset": {"source": "cats"}}, ws)["dataset"]["source"] == "cats"
    # a Hub id never passes for a path, and a path never for a Hub id
    assert HUB_ID.fullmatch("runwayml/stable-diffusion-v1-5")
    for not_hub in ("../etc", "./x", "/etc/passwd", "a/b/c", "a--b/c", "a/..b", "~/x", "a/"):
        assert not HUB_ID.fullmatch(not_hub), not_hub
    with pytest.raises(LoraLabError, match="outside the workspace"):
        train_config({"model": {"base": "/etc/passwd"}}, ws)
    with pytest.raises(NotFound):
        train_config({"model": {"base": "x" * 300 + "/y"}}, ws)  # too long to exist: no OSError


# -- caption jobs and caption servers ----------------------------------------------------------------
async def test_a_caption_job_with_model_files_outside_the_workspace_is_refused(api, ws, shapes,
                                                                               tmp_path):
    outside = tmp_path / "model.gguf"
    outside.write_bytes(b"GGUF")
    for key in ("model", "mmproj"):
        code, err, _ = await api("jobs", method="POST", body={"kind": "caption", "params": {
            "dataset": shapes, key: str(outside)}})
        assert code == 400 and f"caption parameter {key}" in err["detail"], err
        assert "outside the workspace" in err["detail"]
    assert submitted(ws) == []


async def test_a_caption_server_no_setting_allows_is_refused(api, ws, shapes):
    code, err, _ = await api("jobs", method="POST", body={"kind": "caption", "params": {
        "dataset": shapes, "server": "http://203.0.113.9:8080"}})
    assert code == 400 and "not allowed" in err["detail"]
    assert "allowed_caption_servers" in err["detail"]
    assert submitted(ws) == []


@pytest.mark.parametrize("jp_server_config", [{"allowed_caption_servers": ["http://127.0.0.1:8080"]}],
                         indirect=True)
async def test_only_the_allowed_caption_servers_pass(api, ws, shapes):
    code, health, _ = await api("health")
    assert health["allowed_caption_servers"] == ["http://127.0.0.1:8080"]
    for url in ("http://127.0.0.1:8081", "http://127.0.0.1:8080.evil.net", "https://127.0.0.1:8080",
                "http://user@127.0.0.1:8080"):
        code, err, _ = await api("jobs", method="POST", body={"kind": "caption", "params": {
            "dataset": shapes, "server": url}})
        assert code == 400 and "not allowed" in err["detail"], url
    # an allowed server passes the check: what is refused next is the missing dataset
    code, err, _ = await api("jobs", method="POST", body={"kind": "caption", "params": {
        "dataset": "nope", "server": "http://127.0.0.1:8080/v1"}})
    assert code == 404 and "nope" in err["detail"]
    assert submitted(ws) == []
    code, doc, _ = await api("openapi.json")
    params = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    one, several = params["oneOf"][0]["properties"]["params"]["properties"]["server"]["oneOf"]
    assert "127\\.0\\.0\\.1:8080" in one["pattern"] and several["items"]["pattern"] == one["pattern"]


@pytest.mark.parametrize("jp_server_config", [{"allowed_caption_servers": ["http://127.0.0.1:8080"]}],
                         indirect=True)
async def test_a_list_of_caption_servers_is_checked_url_by_url(api, ws, shapes):
    code, err, _ = await api("jobs", method="POST", body={"kind": "caption", "params": {
        "dataset": shapes, "server": ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]}})
    assert code == 400 and "caption server 'http://127.0.0.1:8081' is not allowed" in err["detail"]
    code, err, _ = await api("jobs", method="POST", body={"kind": "caption", "params": {
        "dataset": shapes, "server": ["http://127.0.0.1:8080", "http://127.0.0.1:8080/v1"]}})
    assert code == 400 and "is named twice" in err["detail"]
    # both allowed and named once: probed before the job exists (nothing listens on 8080 here),
    # a server's trouble (503), not the request's
    code, err, _ = await api("jobs", method="POST", body={"kind": "caption", "params": {
        "dataset": shapes, "server": ["http://127.0.0.1:8080", "http://127.0.0.1:8080/team"]}})
    assert code == 503 and "no caption server at http://127.0.0.1:8080/v1" in err["detail"], err
    assert submitted(ws) == []


def test_caption_server_prefixes_match_by_scheme_host_port_and_path_segment():
    allowed = ["http://127.0.0.1:8080", "https://cap.example/team"]
    assert caption_server_allowed("http://127.0.0.1:8080", allowed)
    assert caption_server_allowed("http://127.0.0.1:8080/v1/chat/completions", allowed)
    assert caption_server_allowed("https://cap.example/team/v1", allowed)
    for url in ("http://127.0.0.1", "http://127.0.0.1:80800", "https://cap.example/teammate/v1",
                "https://cap.example/team/../admin", "http://cap.example/team", "ftp://127.0.0.1:8080",
                "https://cap.example.evil/team", "http://127.0.0.1:8080@evil.net"):
        assert not caption_server_allowed(url, allowed), url
    assert not caption_server_allowed("http://127.0.0.1:8080", [])


# -- ingest ------------------------------------------------------------------------------------------
async def test_a_source_outside_the_workspace_and_the_ingest_roots_is_refused(api, ws, samples):
    code, err, _ = await api("datasets", method="POST", params={"name": "x"},
                             body={"source": str(samples)})
    assert code == 400 and "outside the workspace" in err["detail"]
    assert "ingest_roots" in err["detail"] and not (ws.datasets / "x").exists()


async def test_a_source_under_an_ingest_root_is_read(api, ws, samples, roots, tmp_path):
    shutil.copytree(samples, roots / "shoot-1")
    code, report, _ = await api("datasets", method="POST", params={"name": "shoot"},
                                body={"source": str(roots / "shoot-1")})
    assert code == 201 and len(report["added"]) == 8, report
    # a sibling folder whose name starts like the root's is not under it
    shutil.copytree(samples, tmp_path / "incoming-other")
    code, err, _ = await api("datasets", method="POST", params={"name": "other"},
                             body={"source": str(tmp_path / "incoming-other")})
    assert code == 400 and "outside the workspace" in err["detail"]
    (roots / "escape").symlink_to(tmp_path / "incoming-other")  # a link out of the root
    code, err, _ = await api("datasets", method="POST", params={"name": "other"},
                             body={"source": str(roots / "escape")})
    assert code == 400 and not (ws.datasets / "other").exists()
    code, err, _ = await api("datasets", method="POST", params={"name": "ghost"},
                             body={"source": str(roots / "nope")})
    assert code == 404


def test_ingest_sources_resolve_inside_the_allowed_folders(ws, tmp_path):
    (ws.root / "in").mkdir()
    assert ingest_source("in", ws, []) == ws.root / "in"
    for bad in ("", ".", "..", "/etc", "~", "in/../../x", "a\x00b"):
        with pytest.raises(LoraLabError):
            ingest_source(bad, ws, [])
    with pytest.raises(NotFound):
        ingest_source("x" * 300, ws, [])  # too long to exist: a 404, not an OSError


# -- methods -----------------------------------------------------------------------------------------
async def test_a_method_a_route_lacks_is_405_with_an_allow_header(api, ws, shapes):
    code, err, headers = await api("datasets", method="DELETE")
    assert code == 405 and set(headers["Allow"].split(", ")) == {"GET", "POST", "OPTIONS"}
    assert set(err) == {"error", "detail"}
    code, _, headers = await api("datasets", shapes, "captions", "red_circle.jpg", method="PATCH",
                                 body={})
    assert code == 405 and set(headers["Allow"].split(", ")) == {"GET", "PUT", "OPTIONS"}
    job_id = "20260101-000000-train-abcdef"
    code, _, headers = await api("jobs", job_id, "stream", method="POST", body={})
    assert code == 405 and headers["Allow"] == "GET"
    JobRecord.create("train", {}, ws)  # a plain GET of the WebSocket: 400, as documented
    code, _, _ = await api("jobs", next(ws.jobs.iterdir()).name, "stream")
    assert code == 400
