"""`lora-lab lora push` against a real local Hub (tests/hub_server.py) that huggingface_hub
reaches through HF_ENDPOINT: a LoRA trained on the tiny SD1.5 and a hand-built kohya file go up
with their model cards and images in one commit and come back byte-identical through
hf_hub_download; a dry run writes the card and file list and sends nothing; a missing token, a
file that is not a LoRA, a bad repo id and an unreachable Hub are refused before any upload."""
from __future__ import annotations

import hashlib
import io
import json
import socket

import pytest
import torch
import yaml
from hub_server import LocalHub
from PIL import Image
from safetensors.torch import save_file
from test_train import config

from lora_lab.jobdir import JobRecord

TOKEN = "hf_alice_write"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The local Hub with a writer, alice, and huggingface_hub pointed at it with no token."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    with LocalHub(writers={TOKEN: "alice"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HOME", str(home))
        for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        # conftest switched the Hub off before huggingface_hub read its environment (at import)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        # hf_xet would send the LoRA to a Xet CAS server, which this Hub is not: the LFS path
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        yield hub


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """A LoRA trained 4 steps on the tiny SD1.5 by `lora-lab train`, with two sample prompts
    rendered at steps 2 and 4 and a LoRA saved at step 2 too: (its workspace root, the final
    LoRA, its job)."""
    from lora_lab.cli import main

    root = tmp_path_factory.mktemp("push-ws")
    run = config(tiny_models, train={"max_steps": 4}, save={"every_n_steps": 2},
                 sample={"every_n_steps": 2, "prompts": ["sks, a red circle", "sks, a blue square"],
                         "steps": 2}).write(root / "run.toml")
    out = root / "out.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_LAB_HOME", str(root / "ws"))
        import contextlib

        with open(out, "w") as f, contextlib.redirect_stdout(f):
            assert main(["train", str(run), "--json"]) == 0
    result = json.loads(out.read_text())
    return root / "ws", result["output"], JobRecord(root / "ws" / "jobs" / result["job"])


@pytest.fixture
def trained_ws(trained, monkeypatch):
    root, lora, job = trained
    monkeypatch.setenv("LORA_LAB_HOME", str(root))
    return trained


def kohya_file(path, **metadata) -> str:
    """A kohya-format SD1.5 LoRA built by hand: two attention projections of rank 4."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for module in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                   "lora_te_text_model_encoder_layers_0_self_attn_q_proj"):
        tensors[f"{module}.lora_down.weight"] = torch.randn(4, 32, generator=g, dtype=torch.float16)
        tensors[f"{module}.lora_up.weight"] = torch.randn(32, 4, generator=g, dtype=torch.float16)
        tensors[f"{module}.alpha"] = torch.tensor(2.0)
    save_file(tensors, path, metadata)
    return str(path)


HAND_META = {"ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_base_model_version": "sd_v1",
             "ss_sd_model_name": "stable-diffusion-v1-5/stable-diffusion-v1-5", "ss_steps": "1500",
             "ss_learning_rate": "0.0001", "ss_optimizer": "AdamW8bit", "modelspec.trigger_phrase": "ohwx",
             "ss_tag_frequency": json.dumps({"10_ohwx": {"ohwx": 20, "smiling": 7}})}


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


def downloaded(hub, repo: str, path: str, tmp_path) -> bytes:
    """A file of the repo as hf_hub_download fetches it back from the Hub."""
    from huggingface_hub import hf_hub_download

    local = hf_hub_download(repo, path, cache_dir=tmp_path / "hf-cache", token=TOKEN, endpoint=hub.endpoint)
    with open(local, "rb") as f:
        return f.read()


# -- pushes ----------------------------------------------------------------------------------------
def test_a_trained_lora_goes_up_with_card_samples_and_curve_in_one_commit(cli, trained_ws, hub,
                                                                          monkeypatch, tmp_path):
    root, lora, job = trained_ws
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = json.loads(cli("lora", "push", lora, "--repo", "alice/circles", "--private", "--json")[1])
    name = lora.rsplit("/", 1)[1]
    images = ["images/sample-0.png", "images/sample-1.png", "images/training-loss.png"]
    assert sorted(result["files"]) == sorted([name, "README.md", *images])
    repo = hub.repos["alice/circles"]
    assert repo.private and len(repo.commits) == 1 and result["commit"] == repo.commit
    assert repo.commits[0]["paths"] == sorted(result["files"])
    with open(lora, "rb") as f:
        assert downloaded(hub, "alice/circles", name, tmp_path) == f.read()
    assert repo.files[name].lfs  # the LoRA went through the LFS batch and upload
    for i in (0, 1):  # the latest sampled step's images, byte for byte
        sample = job.path / "samples" / f"step-000004-{i}.png"
        assert downloaded(hub, "alice/circles", f"images/sample-{i}.png", tmp_path) == sample.read_bytes()
    curve = Image.open(io.BytesIO(downloaded(hub, "alice/circles", "images/training-loss.png", tmp_path)))
    assert curve.format == "PNG" and curve.size == (560, 260)
    readme = downloaded(hub, "alice/circles", "README.md", tmp_path).decode()
    meta = front_matter(readme)
    assert meta["instance_prompt"] == "sks" and "base_model" not in meta  # a local base: no Hub id
    assert {"lora", "diffusers", "text-to-image", "stable-diffusion"} <= set(meta["tags"])
    assert meta["widget"] == [{"text": "sks, a red circle", "output": {"url": "images/sample-0.png"}},
                              {"text": "sks, a blue square", "output": {"url": "images/sample-1.png"}}]
    assert "## Samples (step 4)" in readme and "| Ranks | 16 |" in readme and "Noise offset" not in readme
    assert "| Steps | 4 |" in readme and "![training loss](images/training-loss.png)" in readme
    assert f'pipe.load_lora_weights("alice/circles", weight_name="{name}")' in readme
    assert 'from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5", torch_dtype=torch.float16)' \
        '.to("cuda")  # the base it was trained on: sd15' in readme
    assert 'image = pipe("sks, a red circle")' in readme and f"<lora:{name[:-12]}:1>" in readme
    assert readme.count(f"# {name[:-12]}\n") == 1  # titled by the file: the run had no name
    assert 'max_steps = 4' in readme and str(root) not in readme  # the config, without local paths
    assert "validation loss" not in readme  # this run had no validation


def test_validation_events_give_a_curve_with_the_best_step(trained_ws, hub, tmp_path):
    """The validation events as the trainer's validation writes them, added to a copy of the
    job's record: the card draws their curve and names the best step."""
    from lora_lab.tools.push import push_lora

    root, lora, job = trained_ws
    events = (job.path / "events.jsonl").read_text()
    try:
        for step, loss, best in ((2, 0.31, True), (4, 0.35, False)):
            job.event({"type": "validation", "step": step, "loss": loss, "best": best, "samples": []})
        result = push_lora(lora, "alice/val", dry_run=tmp_path / "card")
    finally:
        (job.path / "events.jsonl").write_text(events)
    assert "images/validation-loss.png" in [f["path"] for f in result["files"]]
    readme = (tmp_path / "card" / "README.md").read_text()
    assert "The best validation loss, 0.31, came at step 2." in readme
    assert Image.open(tmp_path / "card" / "images" / "validation-loss.png").size == (560, 260)
    assert hub.log == []


def test_a_step_file_gets_the_samples_and_losses_of_its_step(trained_ws, hub, tmp_path):
    from lora_lab.tools.push import push_lora

    root, lora, job = trained_ws
    step2 = next(e["path"] for e in job.status()["loras"] if e["step"] == 2)
    push_lora(step2, "alice/circles", dry_run=tmp_path / "card")
    readme = (tmp_path / "card" / "README.md").read_text()
    assert "## Samples (step 2)" in readme and "| Steps | 2 |" in readme
    for i in (0, 1):
        sample = job.path / "samples" / f"step-000002-{i}.png"
        assert (tmp_path / "card" / "images" / f"sample-{i}.png").read_bytes() == sample.read_bytes()
    assert hub.log == []


def test_a_long_noisy_loss_curve_gets_its_moving_average():
    from lora_lab.tools.curves import loss_chart

    rng = torch.Generator().manual_seed(0)
    noisy = [(s, 0.2 + 0.1 * torch.rand(1, generator=rng).item()) for s in range(1, 301)]
    img = Image.open(io.BytesIO(loss_chart(noisy, "training loss"))).convert("RGB")
    colours = {c for _, c in img.getcolors(1 << 16)}
    assert (170, 200, 225) in colours and (31, 119, 180) in colours  # the points, and their average
    short = Image.open(io.BytesIO(loss_chart(noisy[:10], "training loss"))).convert("RGB")
    assert (170, 200, 225) not in {c for _, c in short.getcolors(1 << 16)}


def test_a_hand_built_kohya_file_gets_a_card_from_its_metadata(cli, ws, hub, monkeypatch, tmp_path):
    lora = kohya_file(tmp_path / "ohwx.safetensors", **HAND_META)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = json.loads(cli("lora", "push", lora, "--repo", "ohwx-lora", "--json")[1])
    assert result["repo"] == "alice/ohwx-lora" and sorted(result["files"]) == ["README.md", "ohwx.safetensors"]
    assert not hub.repos["alice/ohwx-lora"].private
    with open(lora, "rb") as f:
        assert downloaded(hub, "alice/ohwx-lora", "ohwx.safetensors", tmp_path) == f.read()
    readme = downloaded(hub, "alice/ohwx-lora", "README.md", tmp_path).decode()
    assert 'pipe.load_lora_weights("alice/ohwx-lora", weight_name="ohwx.safetensors")' in readme
    meta = front_matter(readme)
    assert meta["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert meta["license"] == "creativeml-openrail-m" and meta["instance_prompt"] == "ohwx"
    assert "widget" not in meta and "| Optimizer | AdamW8bit |" in readme and "| Ranks | 4 |" in readme
    assert "`ohwx` (20), `smiling` (7)" in readme and "lora-lab config" not in readme


def test_pushing_again_commits_only_what_changed(cli, ws, hub, monkeypatch, tmp_path):
    lora = kohya_file(tmp_path / "a.safetensors", **HAND_META)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = cli("lora", "push", lora, "--repo", "alice/a")[1]
    assert f"pushed a.safetensors, README.md to {hub.endpoint}/alice/a (commit " in out
    cli("lora", "push", lora, "--repo", "alice/a")  # the same file and card: no new commit
    assert len(hub.repos["alice/a"].commits) == 1
    kohya_file(tmp_path / "b.safetensors", **{**HAND_META, "ss_steps": "3000"})
    cli("lora", "push", tmp_path / "b.safetensors", "--repo", "alice/a")
    assert [c["paths"] for c in hub.repos["alice/a"].commits] == [["README.md", "a.safetensors"],
                                                                   ["README.md", "b.safetensors"]]


# -- dry run ---------------------------------------------------------------------------------------
def test_a_dry_run_writes_card_images_and_file_list_and_sends_nothing(cli, trained_ws, hub, tmp_path):
    root, lora, job = trained_ws
    out = tmp_path / "card"
    text = cli("lora", "push", lora, "--repo", "alice/circles", "--dry-run", "--out", out)[1]
    assert "dry run: nothing uploaded" in text and hub.log == []
    listing = json.loads((out / "upload.json").read_text())
    with open(lora, "rb") as f:
        lora_sha = hashlib.sha256(f.read()).hexdigest()
    by_path = {f["path"]: f for f in listing["files"]}
    name = lora.rsplit("/", 1)[1]
    assert listing["repo"] == "alice/circles" and sorted(by_path) == sorted(
        [name, "README.md", "images/sample-0.png", "images/sample-1.png", "images/training-loss.png"])
    assert by_path[name]["sha256"] == lora_sha and by_path[name]["source"] == lora
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([*[p for p in by_path if p != name], "upload.json"])  # the LoRA is listed only
    for path, entry in by_path.items():
        if entry["source"] == "generated":
            assert hashlib.sha256((out / path).read_bytes()).hexdigest() == entry["sha256"]
    line = cli.fails("lora", "push", lora, "--repo", "alice/circles", "--dry-run", "--out", out)
    assert "already exists and is not an empty folder" in line
    assert "--dry-run and --out DIR go together" in cli.fails("lora", "push", lora, "--repo", "a/b", "--dry-run")


# -- refusals --------------------------------------------------------------------------------------
def test_without_a_token_nothing_reaches_the_hub(cli, ws, hub, tmp_path):
    lora = kohya_file(tmp_path / "x.safetensors", **HAND_META)
    line = cli.fails("lora", "push", lora, "--repo", "alice/x")
    assert "cannot push: no Hugging Face token; set HF_TOKEN to a write token" in line
    assert "hf auth login" in line and hub.log == [] and hub.repos == {}


def test_a_token_the_hub_refuses_or_a_read_token_uploads_nothing(cli, ws, hub, monkeypatch, tmp_path):
    lora = kohya_file(tmp_path / "x.safetensors", **HAND_META)
    monkeypatch.setenv("HF_TOKEN", "hf_unknown")
    assert "does not accept the token (HTTP 401)" in cli.fails("lora", "push", lora, "--repo", "alice/x")
    hub.tokens.add("hf_read")
    monkeypatch.setenv("HF_TOKEN", "hf_read")
    assert "the token of reader is read-only" in cli.fails("lora", "push", lora, "--repo", "alice/x")
    assert hub.writes() == [] and hub.repos == {}
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    line = cli.fails("lora", "push", lora, "--repo", "bob/x")
    assert "the token may not write to bob/x" in line and hub.repos == {}


def test_a_file_that_is_not_a_lora_is_refused_before_the_hub(cli, ws, hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    save_file({"model.weight": torch.zeros(2, 2)}, tmp_path / "base.safetensors")
    assert "holds no LoRA weights" in cli.fails("lora", "push", tmp_path / "base.safetensors", "--repo", "alice/x")
    (tmp_path / "notes.safetensors").write_text("not a safetensors file")
    assert "is not a readable .safetensors file" in cli.fails("lora", "push", tmp_path / "notes.safetensors",
                                                               "--repo", "alice/x")
    assert "LoRA file not found" in cli.fails("lora", "push", tmp_path / "gone.safetensors", "--repo", "alice/x")
    line = cli.fails("lora", "push", tmp_path / "base.safetensors", "--repo", "alice/x", "--dry-run",
                     "--out", tmp_path / "card")
    assert "holds no LoRA weights" in line and not (tmp_path / "card").exists()  # no half-written card
    kohya_file(tmp_path / "x.safetensors", **HAND_META)
    (tmp_path / "x.safetensors").rename(tmp_path / "x.ckpt")
    assert "x.ckpt is not a .safetensors file" in cli.fails("lora", "push", tmp_path / "x.ckpt", "--repo", "alice/x")
    assert hub.log == []


@pytest.mark.parametrize("repo", ["alice/x/y", "alice/-x", "alice/x..y", "a" * 97, "alice/x y", ""])
def test_an_invalid_repo_id_is_refused_before_anything(cli, ws, hub, monkeypatch, tmp_path, repo):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    lora = kohya_file(tmp_path / "x.safetensors", **HAND_META)
    assert "is not a Hub repo id: use ORG/NAME" in cli.fails("lora", "push", lora, "--repo", repo)
    line = cli.fails("lora", "push", lora, "--repo", repo, "--dry-run", "--out", tmp_path / "card")
    assert "is not a Hub repo id" in line
    assert hub.log == [] and not [p for p in tmp_path.iterdir() if "card" in p.name]  # nor a staging one


def test_an_unreachable_hub_or_offline_mode_is_one_line(cli, ws, hub, monkeypatch, tmp_path):
    lora = kohya_file(tmp_path / "x.safetensors", **HAND_META)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "cannot push: HF_HUB_OFFLINE is set" in cli.fails("lora", "push", lora, "--repo", "alice/x")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", nowhere)
    line = cli.fails("lora", "push", lora, "--repo", "alice/x")
    assert f"cannot reach the Hub at {nowhere}" in line and "nothing was committed" in line
    assert hub.log == []
