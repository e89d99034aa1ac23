"""`lora-lab models` and GET models / POST models/pull against a real local Hub (tests/hub_server.py)
that huggingface_hub reaches through HF_ENDPOINT: catalogue and repo pulls, resumes after a cut
connection, an outage and a killed process (seen in the Range requests), hash checks, refusals
before any byte is written (disk, gated, unknown name, offline), the listing, and a pulled caption
model becoming the default of `lora-lab caption`."""
from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_server import LocalHub
from server_api import api, jp_server_config  # noqa: F401 (fixture)

from lora_lab.captioning.llama import model_paths
from lora_lab.models import list_models, present
from lora_lab.models.local import RECORD, read_record

MiB = 2**20


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The local Hub, with huggingface_hub pointed at it and no token anywhere."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    with LocalHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HOME", str(home))  # job processes read their token file here
        for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        # conftest switched the Hub off for the whole session before huggingface_hub read its
        # environment (at import); these tests' Hub is the local server, their token file none
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        yield hub


def pseudo_random(n: int, seed: int = 0) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture
def repo(hub):
    """org/repo: a small config, a 6 MiB weights file (LFS) and a GGUF in a subfolder."""
    hub.add("org/repo", {"config.json": b'{"hidden": 8}\n', "w.safetensors": pseudo_random(6 * MiB),
                         "sub/x.gguf": pseudo_random(50_000, 1)})
    return "org/repo"


def cdn_ranges(hub, repo, path):
    return [r["range"] for r in hub.gets(repo, path)]


def pull_json(cli, *args) -> dict:
    return json.loads(cli("models", "pull", *args, "--json")[1])


# -- pulls -----------------------------------------------------------------------------------------
def test_a_repo_pulls_every_file_verified_and_a_second_pull_downloads_nothing(cli, ws, hub, repo):
    result = pull_json(cli, repo)
    folder = ws.models / "repo"
    assert result["path"] == str(folder) and result["downloaded"] == 3 and result["kept"] == 0
    for path in ("config.json", "w.safetensors", "sub/x.gguf"):
        f = hub.file(repo, path)
        assert (folder / path).read_bytes() == f.read(0, f.size)
    record = read_record(folder)
    assert record["complete"] and record["repo"] == repo and record["revision"] == hub.repos[repo].commit
    assert record["files"]["w.safetensors"]["sha256"] == hub.file(repo, "w.safetensors").sha256
    assert not (folder / ".incomplete").exists()
    # the large file came from the CDN host, without the Hub's token
    assert cdn_ranges(hub, repo, "w.safetensors") == [None]
    hub.log.clear()
    again = pull_json(cli, repo)
    assert again["downloaded"] == 0 and again["kept"] == 3
    assert not [r for r in hub.log if r["path"].startswith("/cdn/")]


def test_include_globs_and_one_file_by_path(cli, ws, hub, repo):
    pull_json(cli, repo, "--include", "*.json", "--name", "configs")
    assert sorted(p.name for p in (ws.models / "configs").iterdir()) == [RECORD, "config.json"]
    _, out, err = cli("models", "pull", f"{repo}/sub/x.gguf")
    assert (ws.models / "repo" / "sub" / "x.gguf").stat().st_size == 50_000
    assert not (ws.models / "repo" / "w.safetensors").exists()
    assert out.startswith("org/repo/sub/x.gguf: 1 file(s) downloaded (50.0 KB), 0 already there")
    assert f"{ws.models / 'repo'} (" in out and "] 50/50 KB" in err  # the bar's last line
    assert "--include is for a whole repo" in cli.fails("models", "pull", f"{repo}/sub/x.gguf",
                                                        "--include", "*.json")


def test_a_background_pull_is_a_job(cli, ws, hub, repo):
    from lora_lab.jobdir import open_job

    job_id = json.loads(cli("models", "pull", repo, "--background", "--json")[1])["id"]
    job = open_job(job_id, ws)
    deadline = time.monotonic() + 120
    while (view := job.view())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert view["state"] == "succeeded" and view["progress"] == 1.0 and view["kind"] == "pull"
    assert job.spec()["params"] == {"model": repo, "name": "repo", "include": []}
    assert read_record(ws.models / "repo")["complete"]


def half_precision_copy(src: Path, dest: Path) -> Path:
    """``src`` with every float tensor in fp16, as a repo's ``.fp16.safetensors`` variant."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(src, "numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.astype("float16") if v.dtype.kind == "f" else v for k, v in tensors.items()},
              dest, metadata=metadata)
    return dest


SD15_WEIGHTS = ("text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors")


def sd15_repo(hub, tiny_models, tmp_path):
    """The tiny SD1.5 pipeline laid out as the real repo is: fp32 and fp16 weights, .bin
    copies, a single-file checkpoint at the top, the safety checker."""
    src = tiny_models["sd15"]
    files = {p.relative_to(src).as_posix(): p for p in src.rglob("*") if p.is_file()}
    for rel in SD15_WEIGHTS:
        fp16 = rel.replace(".safetensors", ".fp16.safetensors")
        files[fp16] = half_precision_copy(src / rel, tmp_path / "fp16" / fp16)
    files.update({"unet/diffusion_pytorch_model.bin": b"pickled weights",
                  "v1-5-pruned-emaonly.safetensors": tiny_models["sd15_file"],
                  "safety_checker/config.json": b"{}\n", "safety_checker/model.safetensors": b"x" * 2000,
                  "feature_extractor/preprocessor_config.json": b'{"crop_size": 224}\n'})
    hub.add("stable-diffusion-v1-5/stable-diffusion-v1-5", files)
    return files


def test_a_catalogue_base_model_takes_only_what_its_pipeline_reads_and_loads(
        cli, ws, hub, tiny_models, tmp_path):
    from lora_lab.training.base_model import load_base_model, local_models

    files = sd15_repo(hub, tiny_models, tmp_path)
    assert pull_json(cli, "sd15")["path"] == str(ws.models / "sd15")
    folder = ws.models / "sd15"
    got = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    expected = sorted([f for f in files if f.endswith(".json") or f.startswith("tokenizer/")]
                      + list(SD15_WEIGHTS) + [RECORD])
    assert got == expected  # fp16 weights under the plain names; no .bin, single file, checker weights
    for rel in SD15_WEIGHTS:
        fp16 = files[rel.replace(".safetensors", ".fp16.safetensors")]
        assert (folder / rel).read_bytes() == fp16.read_bytes()
    assert present(ws)["sd15"] == folder and present(ws)["sdxl"] is None
    assert local_models(ws.models) == [(folder, "sd15")]
    doctor = {line["check"]: line for line in json.loads(cli("doctor", "--json")[1])}
    assert doctor["catalogue"] == {"check": "catalogue", "status": "ok", "found": "pulled: sd15", "fix": None}
    base = load_base_model(str(folder), "sd15")  # what the trainer does with it
    assert next(base.unet.parameters()).dtype.is_floating_point


def caption_repo(hub, tiny_caption) -> None:
    model, mmproj = tiny_caption["caption_model"], tiny_caption["caption_mmproj"]
    hub.add("ggml-org/Qwen2.5-VL-3B-Instruct-GGUF", {
        "Qwen2.5-VL-3B-Instruct-Q8_0.gguf": model, "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf": mmproj,
        "Qwen2.5-VL-3B-Instruct-Q4_K_M.gguf": model, "README.md": b"# the 3B model\n"})


def test_a_pulled_caption_model_is_the_caption_default_without_any_variable(
        cli, ws, hub, tiny_caption, samples, monkeypatch):
    for var in ("LORA_LAB_CAPTION_MODEL", "LORA_LAB_CAPTION_MMPROJ"):
        monkeypatch.delenv(var, raising=False)
    caption_repo(hub, tiny_caption)
    before = model_paths(workspace=ws)
    assert before[0] == ws.models / "caption" / "Qwen2.5-VL-7B-Instruct-Q8_0.gguf"  # not there yet
    pull_json(cli, "caption-small")
    folder = ws.models / "caption-small"
    pair = (folder / "Qwen2.5-VL-3B-Instruct-Q8_0.gguf", folder / "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf")
    assert model_paths(workspace=ws) == pair
    assert not (folder / "Qwen2.5-VL-3B-Instruct-Q4_K_M.gguf").exists()
    cli("dataset", "ingest", samples, "--name", "shapes")
    _, out, _ = cli("caption", "shapes", "--max-tokens", "8", "--json")
    report = json.loads(out)
    assert report["captioned"] > 0 and report["model"].startswith("Qwen2.5-VL-3B-Instruct-Q8_0.gguf")
    # an argument or the environment still wins
    assert model_paths("a.gguf", "b.gguf", ws) == (Path("a.gguf"), Path("b.gguf"))
    monkeypatch.setenv("LORA_LAB_CAPTION_MODEL", "/m/model.gguf")
    assert model_paths(workspace=ws) == (Path("/m/model.gguf"), pair[1])


# -- resume and verification -----------------------------------------------------------------------
def test_a_connection_cut_mid_file_is_asked_again_for_the_rest_only(cli, ws, hub, repo):
    cut = 3 * MiB + 12345
    hub.cut(repo, "w.safetensors", after=cut)
    result = pull_json(cli, repo)
    assert cdn_ranges(hub, repo, "w.safetensors") == [None, f"bytes={cut}-"]  # every byte kept
    f = hub.file(repo, "w.safetensors")
    assert (ws.models / "repo" / "w.safetensors").read_bytes() == f.read(0, f.size)
    assert result["downloaded"] == 3


def test_a_pull_stopped_by_an_outage_resumes_in_the_next_pull(cli, ws, hub, repo):
    cut = 3 * MiB + 12345
    hub.cut(repo, "w.safetensors", after=cut, outage=True)
    line = cli.fails("models", "pull", repo, "--json")  # --json: no progress lines around it
    assert f"stopped at {cut} of {6 * MiB} bytes (the server answered HTTP 503)" in line
    assert "pull again to resume" in line
    folder = ws.models / "repo"
    assert not (folder / "w.safetensors").exists() and not read_record(folder)["complete"]
    [listed] = [o for o in list_models(ws)["other"] if o["name"] == "repo"]
    assert listed["complete"] is False and listed["bytes"] >= 3 * MiB
    hub.heal()
    hub.log.clear()
    result = pull_json(cli, repo)
    assert cdn_ranges(hub, repo, "w.safetensors") == [f"bytes={cut}-"]
    assert result["resumed_bytes"] == cut
    f = hub.file(repo, "w.safetensors")
    assert (folder / "w.safetensors").read_bytes() == f.read(0, f.size)
    assert read_record(folder)["complete"]


def test_a_killed_pull_resumes_from_the_bytes_it_had(cli, ws, hub):
    hub.add("org/slow", {"big.safetensors": pseudo_random(12 * MiB, 2)})
    hub.bytes_per_s = 4 * MiB
    cmd = [sys.executable, "-c", "import sys; from lora_lab.cli import main; sys.exit(main())",
           "models", "pull", "org/slow"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = ws.models / "slow" / ".incomplete"
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size >= 2 * MiB for p in parts.glob("*.part")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    [part] = parts.glob("*.part")
    had = part.stat().st_size
    hub.bytes_per_s = None
    result = pull_json(cli, "org/slow")
    assert cdn_ranges(hub, "org/slow", "big.safetensors")[-1] == f"bytes={had}-"
    assert result["resumed_bytes"] == had > 0
    f = hub.file("org/slow", "big.safetensors")
    assert (ws.models / "slow" / "big.safetensors").read_bytes() == f.read(0, f.size)


@pytest.mark.parametrize("path, kind", [("w.safetensors", "sha256"), ("config.json", "git blob id")])
def test_a_corrupt_download_is_caught_by_its_hash_and_removed(cli, ws, hub, repo, path, kind):
    hub.corrupt(repo, path)
    line = cli.fails("models", "pull", repo, "--json")
    assert f"{path}: the download does not match the Hub's {kind}" in line and "pull again" in line
    folder = ws.models / "repo"
    assert not (folder / path).exists() and not list((folder / ".incomplete").glob("*"))
    pull_json(cli, repo)
    f = hub.file(repo, path)
    assert (folder / path).read_bytes() == f.read(0, f.size)


# -- refused before any byte is written --------------------------------------------------------------
def test_too_little_disk_is_refused_before_any_byte_is_written(cli, ws, hub, repo, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 50 * MiB, 50 * MiB))
    line = cli.fails("models", "pull", repo)
    assert "not enough disk space for org/repo: 6.3 MB to download, 52.4 MB free" in line
    assert list(ws.models.iterdir()) == []
    assert [r["path"] for r in hub.log if "/api/models/" not in r["path"]] == []


def test_a_gated_repo_needs_a_token_with_access(cli, ws, hub, monkeypatch):
    hub.add("org/gated", {"w.safetensors": pseudo_random(MiB)}, gated=True)
    line = cli.fails("models", "pull", "org/gated")
    assert "org/gated is gated: accept its licence at https://huggingface.co/org/gated" in line
    assert "HF_TOKEN" in line and "hf auth login" in line and "huggingface-cli login" in line
    assert list(ws.models.iterdir()) == [] and not [r for r in hub.log if "/resolve/" in r["path"]]
    monkeypatch.setenv("HF_TOKEN", "hf_no_access")
    line = cli.fails("models", "pull", "org/gated")
    assert "your token has no access to it yet: accept its licence" in line
    hub.tokens.add("hf_granted")
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    hub.log.clear()
    pull_json(cli, "org/gated")
    assert (ws.models / "gated" / "w.safetensors").stat().st_size == MiB
    heads = [r["auth"] for r in hub.log if "/resolve/" in r["path"]]
    assert heads == ["Bearer hf_granted"]
    assert [r["auth"] for r in hub.log if r["path"].startswith("/cdn/")] == [None]  # not to the CDN


def test_unknown_names_repos_and_files_are_told_apart(cli, ws, hub, repo):
    line = cli.fails("models", "pull", "sdxll")
    assert "no model 'sdxll' in the catalogue; did you mean sdxl?" in line
    assert "no model org/nope on the Hub" in cli.fails("models", "pull", "org/nope")
    assert "did you mean config.json?" in cli.fails("models", "pull", "org/repo/confg.json")
    assert "is not a model name, a Hub repo" in cli.fails("models", "pull", "org/../etc")
    assert list(ws.models.iterdir()) == []


def test_offline_is_refused_before_any_request(cli, ws, hub, repo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = cli.fails("models", "pull", "sd15")
    assert "cannot pull sd15: HF_HUB_OFFLINE is set" in line
    assert hub.log == [] and list(ws.models.iterdir()) == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", nowhere)
    line = cli.fails("models", "pull", repo)
    assert f"cannot reach the Hub at {nowhere}" in line and list(ws.models.iterdir()) == []


def test_a_different_file_in_the_way_is_left_alone(cli, ws, hub, repo):
    mine = ws.models / "repo" / "config.json"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"mine": true}\n')
    line = cli.fails("models", "pull", repo)
    assert f"{mine} is in the way" in line and mine.read_text() == '{"mine": true}\n'
    same = ws.models / "other" / "config.json"  # the Hub's own bytes, copied by hand: kept
    same.parent.mkdir()
    theirs = hub.file(repo, "config.json")
    same.write_bytes(theirs.read(0, theirs.size))
    assert pull_json(cli, repo, "--name", "other")["kept"] == 1


def test_two_pulls_into_one_folder_at_once_are_refused(cli, ws, hub, repo):
    import fcntl

    folder = ws.models / "repo"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running pull holds it
    try:
        assert "is being pulled already" in cli.fails("models", "pull", repo)
    finally:
        os.close(fd)
    pull_json(cli, repo)


# -- list ------------------------------------------------------------------------------------------
def test_list_shows_the_catalogue_and_what_else_models_holds_with_sizes(cli, ws, hub, repo):
    pull_json(cli, repo)
    (ws.models / "notes.txt").write_text("hello")
    listing = json.loads(cli("models", "list", "--json")[1])
    assert [m["name"] for m in listing["catalogue"]][:2] == ["caption", "caption-small"]
    assert all(m["state"] == "absent" and m["bytes"] == 0 for m in listing["catalogue"])
    flux = next(m for m in listing["catalogue"] if m["name"] == "flux1-dev")
    assert flux["gated"] and flux["size_gb"] > 20
    other = {o["name"]: o for o in listing["other"]}
    assert other["repo"]["complete"] and other["repo"]["repo"] == repo
    assert other["repo"]["bytes"] > 6 * MiB and other["notes.txt"] == {
        "name": "notes.txt", "path": str(ws.models / "notes.txt"), "folder": False, "bytes": 5,
        "repo": None, "complete": None}
    text = cli("models", "list")[1]
    assert "flux1-dev" in text and "gated" in text and "~33.7 GB" in text
    assert "repo/  6.3 MB  (org/repo)" in text and "notes.txt  5 B" in text


# -- REST --------------------------------------------------------------------------------------------
async def test_rest_pulls_as_a_job_and_lists_the_result(api, ws, hub, repo):
    code, listing = await api("models")
    assert code == 200 and {m["name"] for m in listing["catalogue"]} >= {"caption", "sdxl", "qwen-image"}
    code, accepted = await api("models", "pull", method="POST", body={"model": repo})
    assert code == 202 and accepted["job"]["kind"] == "pull"
    for _ in range(300):
        code, job = await api("jobs", accepted["id"])
        if job["state"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.1)
    assert job["state"] == "succeeded", job
    code, events = await api("jobs", accepted["id"], "events")
    kinds = [e["type"] for e in events["events"]]
    assert "progress" in kinds and kinds[-1] == "done"
    code, listing = await api("models")
    [pulled] = [o for o in listing["other"] if o["name"] == "repo"]
    assert pulled["complete"] and pulled["repo"] == repo


async def test_rest_refuses_a_pull_bound_to_fail_before_its_job_exists(api, ws, hub, repo, monkeypatch):
    hub.add("org/gated", {"w.safetensors": b"x" * 100}, gated=True)
    code, err = await api("models", "pull", method="POST", body={"model": "sdxll"})
    assert code == 404 and "did you mean sdxl?" in err["detail"]
    code, err = await api("models", "pull", method="POST", body={"model": "org/gated"})
    assert code == 400 and "HF_TOKEN" in err["detail"]
    code, err = await api("models", "pull", method="POST", body={"model": repo, "revision": "x"})
    assert code == 400 and "unknown field(s) revision" in err["detail"]
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12, MiB))
    code, err = await api("models", "pull", method="POST", body={"model": repo})
    assert code == 507 and "not enough disk space" in err["detail"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.log.clear()
    code, err = await api("models", "pull", method="POST", body={"model": "sd15"})
    assert code == 400 and "HF_HUB_OFFLINE" in err["detail"] and hub.log == []
    assert list(ws.jobs.iterdir()) == [] and list(ws.models.iterdir()) == []
