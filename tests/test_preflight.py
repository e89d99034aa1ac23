"""The checks before a job exists (lora_lab.training.preflight, captioning.job.caption_params),
through check_params and submit, as every surface calls them: their rules on the edge cases,
every problem at once, and nothing written when they refuse."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from conftest import tree_digest
from safetensors.torch import save_file
from test_train import config

from lora_lab.datasets import Dataset
from lora_lab.errors import Conflict, LoraLabError
from lora_lab.jobdir import JobRecord
from lora_lab.jobs import check_params, submit
from lora_lab.training.config import ConfigError
from lora_lab.training.presets import sample_every, sample_prompts


def check(ws, tiny_models, folder=None, **sections) -> dict:
    return check_params("train", {"config": config(tiny_models, **sections).to_dict()}, ws, folder)


def test_the_caption_rule(ws, tiny_models, tmp_path):
    """No trigger word: every image needs a non-empty caption. A trigger word: any image will
    do, even none captioned (they train on the trigger word alone)."""
    folder = shutil.copytree(tiny_models["samples"], tmp_path / "shapes")
    check(ws, tiny_models, dataset={"source": str(folder), "trigger": "sks"})
    (folder / "red_circle.txt").write_text("  \n")  # blank counts as none
    with pytest.raises(LoraLabError, match=r"^dataset.trigger: 4 of 8 images have no caption "
                                           r"\(e.g. purple_square.jpg, red_circle.jpg, white_"):
        check(ws, tiny_models, dataset={"source": str(folder), "trigger": ""})
    for txt in folder.glob("*.txt"):
        txt.unlink()
    check(ws, tiny_models, dataset={"source": str(folder), "trigger": "sks"})  # trigger only
    for image in folder.iterdir():  # every image captioned: no trigger word needed
        image.with_suffix(".txt").write_text(f"a {image.stem.replace('_', ' ')}")
    check(ws, tiny_models, dataset={"source": str(folder), "trigger": ""})
    (folder / "broken.jpg").write_bytes(b"not an image")  # its header is read, as training would
    (folder / "broken.txt").write_text("a broken image")
    with pytest.raises(LoraLabError, match=f"dataset.source: cannot train on {folder / 'broken.jpg'}"):
        check(ws, tiny_models, dataset={"source": str(folder), "trigger": ""})
    (folder / "broken.jpg").unlink()
    kohya = tmp_path / "kohya"  # N_name subfolders are what is read, as the trainer reads them
    shutil.copytree(folder, kohya / "5_shapes")
    (kohya / "5_shapes" / "red_circle.txt").unlink()
    with pytest.raises(LoraLabError, match="1 of 8 images have no caption .e.g. red_circle.jpg. in "
                                           f"folder {kohya}"):
        check(ws, tiny_models, dataset={"source": str(kohya), "trigger": ""})
    (tmp_path / "none").mkdir()
    with pytest.raises(LoraLabError, match=f"dataset.source: folder {tmp_path / 'none'} has no "
                                           "images; copy images"):
        check(ws, tiny_models, dataset={"source": str(tmp_path / "none")})
    Dataset.create("empty", ws)
    with pytest.raises(LoraLabError, match="dataset 'empty' has no images; add some with `lora-lab "
                                           "dataset ingest FOLDER_OR_ZIP --name empty --add`"):
        check(ws, tiny_models, dataset={"source": "empty"})


def test_base_models_that_lead_nowhere(ws, tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(LoraLabError, match=f"^model.base: {tmp_path / 'models' / 'sd15'} does not "
                                           f"exist; {ws.models} holds no base model"):
        check(ws, tiny_models, model={"base": "models/sd15"})  # not a Hub id: models/ is here
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # as conftest sets it
    with pytest.raises(LoraLabError, match="'someone/sd-model' reads as a Hugging Face Hub id, "
                                           "but the Hub is offline here"):
        check(ws, tiny_models, model={"base": "someone/sd-model"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert check(ws, tiny_models, model={"base": "someone/sd-model"})  # online: taken at its word
    shutil.copy(tiny_models["sd15_file"], ws.models / "base.safetensors")
    with pytest.raises(LoraLabError, match=f"{tmp_path / 'base.safetensor'} does not exist .a base "
                                           f"model is .*; models in {ws.models}: base.safetensors "
                                           r"\(sd15\)$"):
        check(ws, tiny_models, model={"base": "base.safetensor"})
    (tmp_path / "sdxl_pipeline").mkdir()
    with pytest.raises(LoraLabError, match="is a folder but not a diffusers model"):
        check(ws, tiny_models, model={"base": "sdxl_pipeline"})
    with pytest.raises(LoraLabError, match=f"model.vae: {tmp_path / 'vae'} does not exist"):
        check(ws, tiny_models, model={"vae": "./vae"})
    with pytest.raises(LoraLabError, match="model.family: 'sd15' does not match the model being "
                                           "trained .sdxl."):
        check(ws, tiny_models, model={"family": "sd15", "base": str(tiny_models["sdxl"])})


def test_a_lora_name_is_free_only_when_no_other_run_holds_it(ws, tiny_models, tmp_path):
    ws.loras.mkdir(exist_ok=True)
    (ws.loras / "hand.safetensors").write_bytes(b"copied in by hand")
    with pytest.raises(Conflict, match="'hand' is taken: .*hand.safetensors exists .not written by "
                                       "a lora_lab job.; choose another save.name, or move or delete"):
        check(ws, tiny_models, save={"name": "hand"})
    save_file({"x": torch.zeros(1)}, ws.loras / "gone-000100.safetensors",
              metadata={"ss_session_id": "20260101-000000000-train-abcdef"})
    with pytest.raises(Conflict, match="is the LoRA of job 20260101-000000000-train-abcdef, since "
                                       "deleted"):
        check(ws, tiny_models, save={"name": "gone"})
    for free in ("gone-2", "hand2", ""):  # another base name, or the default (job-stamped)
        check(ws, tiny_models, save={"name": free})
    out = tmp_path / "elsewhere"  # the same name in another folder is another file
    assert check(ws, tiny_models, save={"name": "hand", "output_dir": str(out)})
    # a run still going will write the name: refused too, naming the job and how to stop it
    running = JobRecord.create("train", check(ws, tiny_models, save={"name": "soon"}), ws)
    running.set_status("running")  # this process, its heartbeat fresh: alive
    with pytest.raises(Conflict, match=f"job {running.id} .running. will write "
                                       f"{ws.loras / 'soon'}.safetensors.*jobs cancel {running.id}"):
        check(ws, tiny_models, save={"name": "soon"})
    running.set_status("cancelled")
    check(ws, tiny_models, save={"name": "soon"})


def test_every_problem_at_once_and_nothing_written(ws, tiny_models, tmp_path):
    jobs = tree_digest(ws.jobs)
    ws.loras.mkdir(exist_ok=True)
    (ws.loras / "x.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        submit("train", {"config": {"model": {"base": str(tmp_path / "nope")},
                                    "dataset": {"source": str(tiny_models["samples"])},
                                    "train": {"lr": -1}, "save": {"name": "x"}}}, ws)
    assert [p.split(":")[0] for p in e.value.problems] == [
        "train.lr", "model.base", "dataset.trigger", "save.name"]
    assert tree_digest(ws.jobs) == jobs


def test_caption_jobs_need_images_and_their_model(ws, tiny_models, tiny_caption, monkeypatch):
    Dataset.create("empty", ws)
    with pytest.raises(LoraLabError, match="'empty' has no images to caption"):
        check_params("caption", {"dataset": "empty", "server": "http://127.0.0.1:1"}, ws)
    ds = Dataset.create("one", ws)
    shutil.copy(tiny_models["samples"] / "red_circle.jpg", ds.path)
    monkeypatch.setenv("LORA_LAB_CAPTION_MODEL", str(tiny_caption["caption_model"]))
    monkeypatch.delenv("LORA_LAB_CAPTION_MMPROJ", raising=False)
    with pytest.raises(LoraLabError, match="caption parameter mmproj: mmproj file not found: "
                                           f"{ws.models / 'caption'}.*that path is the default"):
        check_params("caption", {"dataset": "one"}, ws)
    with pytest.raises(LoraLabError, match="caption parameter mmproj: mmproj .* is not a GGUF file"):
        check_params("caption", {"dataset": "one", "mmproj": str(tiny_models["samples"] /
                                                                 "red_circle.jpg")}, ws)
    params = check_params("caption", {"dataset": "one", "mmproj": tiny_caption["caption_mmproj"].name},
                          ws, tiny_caption["caption_mmproj"].parent)  # relative: from the folder given
    assert params["mmproj"] == str(tiny_caption["caption_mmproj"])
    # no local model for a caption server; on a cluster, its workers probe it when the job starts
    assert check_params("caption", {"dataset": "one", "server": "http://127.0.0.1:1"}, ws, local=False)
    with pytest.raises(LoraLabError, match="no caption server at http://127.0.0.1:1/v1"):
        check_params("caption", {"dataset": "one", "server": "http://127.0.0.1:1"}, ws)  # on this box


def test_default_samples():
    captions = ["a dog, grass", "a dog, sofa", "a dog, grass, sun", "a cat", "a dog, grass"]
    # "a dog, grass": both tags on most images; then "a dog, grass, sun", the next most shared
    assert sample_prompts(captions, "sks") == ["sks", "sks, a dog, grass", "sks, a dog, grass, sun"]
    assert sample_prompts(captions, "") == ["a dog, grass", "a dog, grass, sun"]
    assert sample_prompts([], "sks") == ["sks"] and sample_prompts([], "") == []
    assert [sample_every(n) for n in (1, 3, 24, 240, 1000, 3000)] == [1, 1, 6, 60, 250, 750]
