"""`lora-lab lora try` and lora_lab.tools.tryout on the tiny SD1.5: grids whose cells are exactly
the images of a freshly loaded pipeline with that LoRA at that strength (uint8 pixels equal, no
tolerance: the same float32 ops on the CPU), one pipeline for every LoRA, images cached by their
inputs, a job's and a folder's checkpoints by step (a folder read while a real job writes it),
and every bad input refused before anything loads, leaving nothing behind."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_jobs import wait_until
from test_lora_file import ATTN, MLP, TE, adapted, fresh, lora, save
from test_lora_resize import kohya_file
from test_train import config

from lora_lab import Workspace
from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord, open_job
from lora_lab.jobs import cancel
from lora_lab.tools.tryout import Tryout
from lora_lab.tools.tryout_loras import read_checkpoints
from lora_lab.training.trainer import Trainer

FAST = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def loras(tiny_models, tmp_path_factory):
    """Two LoRAs of the tiny SD1.5 that visibly change its images (the first with the text
    encoder too), and one of SDXL."""
    folder = tmp_path_factory.mktemp("loras")
    a = save(adapted(tiny_models, "sd15", lora(4, 8, ATTN), lora(4, 2, TE)), folder / "a.safetensors")
    b = save(adapted(tiny_models, "sd15", lora(2, 1, MLP), None), folder / "b.safetensors")
    return type("Loras", (), {"a": a, "b": b, "xl": kohya_file(folder / "xl.safetensors", family="sdxl"),
                              "folder": folder})


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """A real train job that saved its LoRA at step 2 and at the end (step 4)."""
    ws = Workspace(tmp_path_factory.mktemp("job-ws"))
    cfg = config(tiny_models, train={"max_steps": 4, "lr": 1e-2}, save={"every_n_steps": 2, "name": "shapes"})
    job = JobRecord.create("train", {}, ws)
    Trainer(cfg, job, ws).run()
    return ws, job


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def fresh_image(tiny_models, path, strength: float, prompt: str, seed: int) -> np.ndarray:
    """The image diffusers gives with the LoRA ``path`` at ``strength`` on a freshly loaded base
    (``path`` None: the base alone), as a user would render it."""
    pipe = fresh(tiny_models, "sd15")
    if path is not None:
        pipe.load_lora_weights(str(path), adapter_name="x")
        pipe.set_adapters(["x"], [strength])
    return pixels(pipe(prompt, num_inference_steps=2, width=64, height=64, guidance_scale=7.0,
                       generator=torch.Generator().manual_seed(seed)).images[0])


def test_grid_cells_are_the_images_of_a_fresh_pipeline_and_one_pipeline_serves_every_lora(ws, tiny_models,
                                                                                         loras):
    tryout = Tryout(tiny_models["sd15"], ws)
    grid = tryout.grid([loras.a, loras.b], ["a red circle", "a blue square"], [0, 0.5, 1], [0, 3], **FAST)
    assert (tryout.loads, tryout.renders, grid.hits) == (1, 4 * 5, 0)  # the base loaded once, for both LoRAs
    assert [(c.path, s) if c else None for c, s in grid.columns] == [
        None, (loras.a, 0.5), (loras.a, 1.0), (loras.b, 0.5), (loras.b, 1.0)]
    assert grid.rows == [("a red circle", 0), ("a red circle", 3), ("a blue square", 0), ("a blue square", 3)]
    assert all({c.seed for c in grid.cells if c.row == r} == {seed} for r, (_, seed) in enumerate(grid.rows))
    for row, col in [(0, 0), (1, 1), (2, 2), (3, 4)]:
        cell = grid.cell(row, col)
        want = fresh_image(tiny_models, cell.lora.path if cell.lora else None, cell.strength, cell.prompt, cell.seed)
        assert np.array_equal(pixels(cell.image), want), (row, col)
    base, full = pixels(grid.cell(0, 0).image), pixels(grid.cell(0, 2).image)
    assert np.abs(base.astype(int) - full).max() > 20  # the LoRA shows
    assert not np.array_equal(pixels(grid.cell(0, 1).image), full)  # and its strength too
    w, h = grid.image.size
    assert w > 5 * 64 and h > 4 * 64  # labelled: room for the headers beside and above the cells
    tryout.close()
    assert not tryout.loaded


def test_a_second_identical_grid_renders_nothing_and_a_changed_lora_misses(ws, tiny_models, loras, tmp_path):
    a = shutil.copy(loras.a, tmp_path / "mine.safetensors")
    args = ([a], ["a red circle"], [0, 1, -0.5], [1, 2])
    first = Tryout(tiny_models["sd15"], ws).grid(*args, **FAST)
    again = Tryout(tiny_models["sd15"], ws)
    second = again.grid(*args, **FAST)
    assert (again.renders, again.loaded, second.hits) == (0, False, 6)  # not even the base was loaded
    assert all(np.array_equal(pixels(x.image), pixels(y.image)) for x, y in zip(first.cells, second.cells))
    assert len(list((ws.root / "cache" / "tryout").rglob("*.png"))) == 6
    other = again.grid(*args, **{**FAST, "steps": 3})  # any input changed: rendered anew
    assert (again.renders, other.hits) == (6, 0)
    shutil.copy(loras.b, a)  # the same file name, other weights
    changed = again.grid(*args, **FAST)
    assert changed.hits == 2 and again.renders == 6 + 4  # the base column came from the cache
    assert not np.array_equal(pixels(changed.cell(0, 1).image), pixels(first.cell(0, 1).image))


def test_cli_saves_the_grid_and_a_json_of_its_inputs(cli, ws, tiny_models, loras, tmp_path):
    out = tmp_path / "grid.png"
    argv = ["lora", "try", loras.a, loras.b, "--base", tiny_models["sd15"], "--prompt", "a red circle",
            "--prompt", "a blue square", "--strength", "0,1", "--seed", 0, "--seed", "5,6", "--steps", 2,
            "--size", "64x64", "--out", out]
    text = cli(*argv)[1]
    assert text.splitlines() == [f"grid of 6 rows x 3 columns -> {out}", f"inputs -> {tmp_path / 'grid.json'}",
                                 "0 of 18 images from the cache, 18 rendered"]
    inputs = json.loads((tmp_path / "grid.json").read_text())
    assert inputs["loras"] == [{"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "step": None}
                               for p in (loras.a, loras.b)]
    assert {k: inputs[k] for k in ("base", "family", "prompts", "seeds", "strengths", "steps", "guidance",
                                   "width", "height", "negative")} == {
        "base": str(tiny_models["sd15"]), "family": "sd15", "prompts": ["a red circle", "a blue square"],
        "seeds": [0, 5, 6], "strengths": [0.0, 1.0], "steps": 2, "guidance": 7.0, "width": 64, "height": 64,
        "negative": ""}
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 3 * 64 and image.height > 6 * 64
    assert "already exists; choose a new name or add --force" in cli.fails(*argv)
    done = json.loads(cli(*argv, "--force", "--json")[1])
    assert (done["cache_hits"], done["rendered"], done["images"]) == (18, 0, 18)
    assert done["grid"] == str(out) and done["inputs"] == inputs
    # rendered again from its JSON alone, the same grid
    again = Tryout(inputs["base"], ws).grid([p["path"] for p in inputs["loras"]], inputs["prompts"],
                                            inputs["strengths"], inputs["seeds"], inputs["steps"], inputs["guidance"],
                                            inputs["width"], inputs["height"], inputs["negative"])
    assert again.hits == 18


def test_a_jobs_loras_are_its_checkpoints_by_step_the_final_last(trained, tiny_models):
    ws, job = trained
    tryout = Tryout(tiny_models["sd15"], ws)
    grid = tryout.grid([job.id], ["sks, a red circle"], [1], [0], **FAST)
    assert [(c.label, c.step) for c, _ in grid.columns] == [("shapes-000002", 2), ("shapes", None)]
    from_folder = tryout.grid([ws.loras], ["sks, a red circle"], [1], [0], **FAST)  # the folder they are in
    assert [c.path for c, _ in from_folder.columns] == [c.path for c, _ in grid.columns]
    assert [c.step for c in read_checkpoints([job.path], str(tiny_models["sd15"]), "sd15", ws)] == [2, None]
    with pytest.raises(LoraLabError, match="a job's checkpoints hold its training state; name the job"):
        read_checkpoints([job.path / "checkpoints"], str(tiny_models["sd15"]), "sd15", ws)
    assert from_folder.hits == 2 and tryout.renders == 2
    assert json.loads(json.dumps(grid.inputs()))["loras"][0]["step"] == 2
    assert not np.array_equal(pixels(grid.cell(0, 0).image), pixels(grid.cell(0, 1).image))  # it trained
    base_only = tryout.grid([job.id], ["sks, a red circle"], [0], [0], **FAST)  # one column, the LoRAs still recorded
    assert len(base_only.columns) == 1 and [lora["step"] for lora in base_only.inputs()["loras"]] == [2, None]


def test_only_complete_files_of_a_folder_being_written_are_read(ws, tiny_models, loras, tmp_path):
    """A running job's output: a LoRA half-written under its hidden .part name, a checkpoint
    being built in step-*.tmp, an atomic write's temp file: none is a checkpoint of the grid."""
    folder = tmp_path / "out"
    folder.mkdir()
    shutil.copy(loras.b, folder / "run-000010.safetensors")
    shutil.copy(loras.a, folder / "run-000002.safetensors")
    shutil.copy(loras.a, folder / "run.safetensors")
    (folder / ".20261207-060000000-train-abcdef.part.safetensors").write_bytes(loras.a.read_bytes()[:5000])
    (folder / ".run-000012.safetensors.1a2b3c4d.tmp").write_bytes(loras.a.read_bytes()[:100])
    (folder / "step-000012.tmp").mkdir()
    (folder / "step-000012.tmp" / "training.pt").write_bytes(b"\0" * 10)
    found = read_checkpoints([folder], str(tiny_models["sd15"]), "sd15", ws)
    assert [(c.path.name, c.step) for c in found] == [("run-000002.safetensors", 2), ("run-000010.safetensors", 10),
                                                     ("run.safetensors", None)]


def test_a_folder_read_while_a_real_job_writes_it(cli, ws, tiny_models, tmp_path):
    """A train job saving a LoRA every step into a folder, read again and again meanwhile: each
    read finds only whole LoRA files, in step order, and a grid renders from them."""
    out = tmp_path / "out"
    path = config(tiny_models, train={"max_steps": 6},
                  save={"every_n_steps": 1, "output_dir": str(out), "name": "live"}).write(tmp_path / "run.toml")
    job = open_job(json.loads(cli("jobs", "submit", "train", path, "--json")[1])["id"], ws)
    reads, seen = 0, set()
    try:
        wait_until(job, lambda v: out.is_dir() and any(out.glob("live-*.safetensors")) or v["state"] != "running"
                   and v["state"] != "queued")
        while job.view()["state"] == "running":
            found = read_checkpoints([out], str(tiny_models["sd15"]), "sd15", ws)  # raises on a partial file
            steps = [c.step for c in found]
            assert steps == sorted(steps, key=lambda s: (s is None, s or 0)) and len(set(steps)) == len(steps)
            reads, seen = reads + 1, seen | set(steps)
        assert job.view()["state"] == "succeeded", job.log_path.read_text()
    finally:
        if job.view()["state"] in ("queued", "running"):
            cancel(job)
    assert reads >= 3 and len(seen) >= 3  # it read while the job wrote, file after file
    grid = Tryout(tiny_models["sd15"], ws).grid([out], ["sks"], [1], [0], steps=1, width=64, height=64)
    assert [c.step for c, _ in grid.columns] == [*range(1, 6), None]


def test_a_concurrent_writer_staging_and_linking_files(ws, tiny_models, loras, tmp_path):
    """Files staged slowly under hidden names and linked into place, as the trainer saves them,
    by a thread writing all the while: every read sees whole files only."""
    folder = tmp_path / "live"
    folder.mkdir()
    data, stop = loras.a.read_bytes(), threading.Event()

    def write() -> None:
        for step in range(1, 41):
            if stop.is_set():
                return
            staged = folder / f".job.part{step}.safetensors"
            with open(staged, "wb") as f:
                for i in range(0, len(data), 8192):
                    f.write(data[i:i + 8192])
                    f.flush()
                    time.sleep(0.002)  # a slow disk: the staged file stays partial a while
            os.link(staged, folder / f"run-{step:06d}.safetensors")
            staged.unlink()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    digest, reads = hashlib.sha256(data).hexdigest(), 0
    try:
        while writer.is_alive():
            found = read_checkpoints([folder], str(tiny_models["sd15"]), "sd15", ws) if any(
                folder.glob("run-*")) else []
            assert all(c.sha256 == digest for c in found)  # whole files only
            assert [c.step for c in found] == list(range(1, len(found) + 1))
            reads += bool(found)
    finally:
        stop.set()
        writer.join()
    assert reads >= 3


# -- bad input: refused before anything loads, one line, nothing left behind --------------------------

def test_bad_grids_are_refused_before_anything_loads(cli, ws, tiny_models, loras, tmp_path):
    out = tmp_path / "grid.png"
    base = tiny_models["sd15"]
    (tmp_path / "notes.safetensors").write_text("not a LoRA")
    shutil.copy(tiny_models["sd15"] / "unet" / "diffusion_pytorch_model.safetensors", tmp_path / "unet.safetensors")

    def refused(*loras_and_flags, match):
        line = cli.fails("lora", "try", *loras_and_flags, "--base", base, "--prompt", "a red circle",
                         "--steps", 2, "--size", "64x64", "--out", out)
        assert match in line, line
        assert not out.exists() and not out.with_suffix(".json").exists()
        assert not (ws.root / "cache").exists()  # nothing rendered, nothing cached

    refused(loras.a, loras.xl, match="cannot compare LoRAs of different families in one grid: a.safetensors is "
                                     "sd15, xl.safetensors is sdxl")
    refused(loras.xl, match=f"xl.safetensors is a LoRA for sdxl, base {base} is sd15")
    refused(loras.a, "--strength", "0,2.5", match="strength 2.5 is outside -2..2")
    refused(loras.a, "--strength", "-3", match="strength -3 is outside -2..2")
    refused(loras.a, tmp_path / "gone.safetensors", match=f"LoRA {tmp_path / 'gone.safetensors'} not found")
    refused(tmp_path / "notes.safetensors", match="notes.safetensors is not a readable .safetensors file")
    refused(tmp_path / "unet.safetensors", match="unet.safetensors holds no LoRA weights")
    refused(tmp_path / "empty", match="not found")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", match="holds no complete .safetensors LoRA file (yet)")
    refused(loras.a, "--seed", "-1", match="seeds must be whole numbers from 0 to")
    refused("20261207-060000000-train-abcdef", match="no job 20261207-060000000-train-abcdef in")
    assert "--out must name a .png file" in cli.fails("lora", "try", loras.a, "--base", base, "--prompt", "p",
                                                      "--out", tmp_path / "grid.jpg")
    with pytest.raises(LoraLabError, match="image sides must be multiples of 8 from 64 to 4096, not 60"):
        Tryout(base, ws).grid([loras.a], ["p"], width=60, height=60)
    with pytest.raises(LoraLabError, match="give at least one prompt"):
        Tryout(base, ws).grid([loras.a], ["  "])
    with pytest.raises(LoraLabError, match="model.base: .* does not exist"):
        Tryout(tmp_path / "nowhere", ws)
    assert not (ws.root / "cache").exists()
