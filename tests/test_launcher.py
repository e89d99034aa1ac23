"""The training launcher as a user drives it, in-process (setting values, clicking): the checks a
job runs before it exists, shown in the form with Train disabled and no job record left; every
config field reachable (the rest under "Advanced"); presets that keep the user's edits; the
workspace's base models; sample prompts and samples on by default."""
from __future__ import annotations

import dataclasses
import shutil
from typing import get_type_hints

import ipywidgets as widgets
import torch
from conftest import tree_digest
from safetensors.torch import save_file

from lora_lab.datasets import ingest
from lora_lab.jobdir import JobRecord
from lora_lab.training.config import TrainConfig
from lora_lab.widgets.launcher import ADVANCED, COMMON, MEMORY, TrainingLauncher


def launcher_on(ws, tiny_models, dataset=None, **values) -> TrainingLauncher:
    """A launcher on the tiny SD1.5 model at tiny sizes, with ``values`` (dotted) typed in."""
    launcher = TrainingLauncher(dataset or str(tiny_models["samples"]), str(tiny_models["sd15"]),
                                workspace=ws, autostart=False)
    settings = {"dataset.resolution": 64, "train.max_steps": 3, "train.optimizer": "adamw",
                "train.mixed_precision": "no"}
    for dotted, value in {**settings, **values}.items():
        launcher.fields[dotted].value = value
    return launcher


def refused(launcher: TrainingLauncher, ws, field: str, *phrases: str) -> None:
    """The form shows the problem beside ``field``, Train is off and says why, and a click
    anyway leaves the jobs folder as it was."""
    before = tree_digest(ws.jobs)
    message = launcher.messages[field].value
    assert all(p in message for p in phrases), message
    assert launcher.train_button.disabled and field in launcher.reason.value
    launcher.train_button.click()  # click() ignores `disabled`: the check runs again
    assert launcher.notice.kind == "error" and launcher.job is None
    assert tree_digest(ws.jobs) == before and not list(ws.jobs.iterdir())


def test_an_uncaptioned_dataset_without_a_trigger_is_refused_in_the_form_and_no_job_record(
        ws, tiny_models):
    ingest(tiny_models["samples"], "shapes", workspace=ws)  # 3 of its 8 images lack a caption
    launcher = launcher_on(ws, tiny_models, "shapes")
    assert launcher.fields["dataset.trigger"].value == ""
    refused(launcher, ws, "dataset.trigger", "3 of 8 images have no caption",
            "in dataset &#x27;shapes&#x27;", "`lora-lab caption shapes`", "set dataset.trigger")
    launcher.fields["dataset.trigger"].value = "sks"  # the other way out: train them on it
    assert launcher.problems == {} and not launcher.train_button.disabled
    assert launcher.reason.value == ""


def test_a_folder_whose_captions_have_another_extension_says_which(ws, tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models["samples"], tmp_path / "captions-elsewhere")
    for txt in folder.glob("*.txt"):
        txt.rename(txt.with_suffix(".caption"))
    launcher = launcher_on(ws, tiny_models, str(folder))
    refused(launcher, ws, "dataset.trigger", "8 of 8 images have no caption",
            "set dataset.caption_extension to &#x27;.caption&#x27;")
    launcher.fields["dataset.caption_extension"].value = ".caption"  # an advanced field
    assert "dataset.trigger" in launcher.problems  # 3 images have no caption of any kind
    assert "3 of 8 images" in launcher.messages["dataset.trigger"].value


def test_a_preset_switch_after_edits_keeps_them_and_says_what_it_changed(ws, tiny_models):
    launcher = TrainingLauncher(str(tiny_models["samples"]), str(tiny_models["sd15"]),
                                workspace=ws, autostart=False)
    launcher.fields["train.lr"].value = 5e-4
    launcher.fields["network.rank"].value = 8
    launcher.fields["dataset.repeats"].value = 3  # no preset sets it: nothing to keep or say
    launcher.preset.value = "sdxl"
    values = launcher.values()
    assert values["train"]["lr"] == 5e-4 and values["network"]["rank"] == 8
    assert values["dataset"]["repeats"] == 3
    assert values["dataset"]["resolution"] == 1024 and values["train"]["batch_size"] == 1
    assert values["train"]["gradient_checkpointing"] is True and values["model"]["family"] == "sdxl"
    said = launcher.preset_changes.value
    assert "SDXL changed" in said and "dataset.resolution 512 → 1024" in said
    assert "train.batch_size 2 → 1" in said and "model.family &#x27;sd15&#x27; → &#x27;sdxl&#x27;" in said
    assert "kept your edits: network.rank (the preset&#x27;s: 32), train.lr (the preset&#x27;s: 0.0001)" in said
    assert "repeats" not in said
    launcher.preset.value = "sd15"  # back: the edits still stand
    assert launcher.values()["train"]["lr"] == 5e-4 and launcher.values()["network"]["rank"] == 8
    assert launcher.values()["dataset"]["resolution"] == 512
    launcher.fields["network.alpha"].value = 12.0
    launcher.preset.value = "sd15-lowvram"
    assert launcher.values()["network"]["alpha"] == 12.0 and launcher.values()["network"]["rank"] == 8
    said = launcher.preset_changes.value
    assert "network.alpha (the preset&#x27;s: 8.0)" in said and "train.batch_size 2 → 1" in said
    # a pod preset asks for a GPU: on this GPU-less box, refused beside the field until "auto"
    assert "train.device &#x27;auto&#x27; → &#x27;cuda&#x27;" in said
    refused(launcher, ws, "train.device", "&quot;cuda&quot;, but this machine shows no GPU")
    launcher.fields["train.device"].value = "auto"
    assert "train.device" not in launcher.problems


def test_every_config_field_is_reachable_with_its_help_and_the_rest_is_advanced(ws, tiny_models):
    launcher = launcher_on(ws, tiny_models, **{"dataset.trigger": "sks"})
    everything = {f"{table}.{f.name}" for table, section in get_type_hints(TrainConfig).items()
                  for f in dataclasses.fields(section)}
    assert set(launcher.fields) == everything
    assert set(ADVANCED) == everything - set(COMMON) - set(MEMORY)
    assert launcher.advanced.selected_index is None  # collapsed
    section = launcher.advanced.children[0]
    shown = {c.children[0] for c in section.children if isinstance(c, widgets.HBox)}
    assert shown == {launcher.fields[d] for d in ADVANCED}
    for dotted, widget in launcher.fields.items():
        assert widget.tooltip.startswith(f"{dotted}: ") and len(widget.tooltip) > len(dotted) + 10
    assert isinstance(launcher.fields["network.targets"], widgets.Dropdown)
    assert list(launcher.fields["network.targets"].options) == ["attn", "attn_mlp", "locon"]
    assert isinstance(launcher.fields["dataset.flip"], widgets.Checkbox)
    assert "[0..1]" in launcher.fields["dataset.caption_dropout"].tooltip
    # advanced values reach the config; a problem in one opens the section and blocks Train
    launcher.fields["dataset.flip"].value = True
    launcher.fields["network.targets"].value = "locon"
    launcher.fields["sample.negative"].value = "blurry"
    cfg = launcher.config()
    assert cfg.dataset.flip and cfg.network.targets == "locon" and cfg.sample.negative == "blurry"
    assert launcher.problems == {}
    launcher.fields["dataset.min_bucket"].value = 128  # above the resolution, 64
    assert "larger than dataset.resolution" in launcher.messages["dataset.min_bucket"].value
    assert launcher.advanced.selected_index == 0 and launcher.train_button.disabled
    assert "dataset.min_bucket" in launcher.reason.value


def test_the_memory_settings_are_shown_apart_each_with_its_explanation(ws, tiny_models):
    launcher = launcher_on(ws, tiny_models, **{"dataset.trigger": "sks"})
    rows = {row.children[0]: row for row in launcher.children if isinstance(row, widgets.HBox)}
    for dotted in MEMORY:
        explanation = rows[launcher.fields[dotted]].children[1].value
        assert "lora-lab-field-doc" in explanation and "lora-lab-field-doc" not in \
            launcher.messages[dotted].value
    said = rows[launcher.fields["model.quantize"]].children[1].value
    assert "8 bits" in said and list(launcher.fields["model.quantize"].options) == ["none", "int8", "fp8"]
    launcher.fields["model.quantize"].value = "int8"
    assert launcher.config().model.quantize == "int8"


def test_the_base_model_is_picked_from_the_workspace_or_a_mistype_is_named(ws, tiny_models):
    shutil.copytree(tiny_models["sd15"], ws.models / "sd15")
    (ws.models / "checkpoints").mkdir()
    shutil.copy(tiny_models["sdxl_file"], ws.models / "checkpoints" / "sdxl.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, ws.models / "a_lora.safetensors")
    shutil.copytree(tiny_models["samples"], ws.models / "caption")  # no model in there
    launcher = launcher_on(ws, tiny_models, **{"dataset.trigger": "sks"})
    base = launcher.fields["model.base"]
    assert isinstance(base, widgets.Combobox) and not base.ensure_option  # or typed
    assert list(base.options) == [str(ws.models / "checkpoints" / "sdxl.safetensors"),
                                  str(ws.models / "sd15")]
    base.value = str(ws.models / "sd15")
    assert launcher.problems == {}
    base.value = str(ws.models / "sd15x")
    refused(launcher, ws, "model.base", f"{ws.models / 'sd15x'} does not exist",
            f"models in {ws.models}: checkpoints/sdxl.safetensors (sdxl), sd15 (sd15)")
    base.value = str(ws.models / "a_lora.safetensors")
    assert "not an SD1.5, SDXL or Z-Image checkpoint" in launcher.messages["model.base"].value


def test_a_taken_lora_name_is_refused_with_who_holds_it(ws, tiny_models):
    holder = JobRecord.create("train", {}, ws)
    holder.set_status("succeeded", pid=None)
    ws.loras.mkdir(exist_ok=True)
    save_file({"x": torch.zeros(1)}, ws.loras / "mine-000500.safetensors",
              metadata={"ss_session_id": holder.id})
    launcher = launcher_on(ws, tiny_models, **{"dataset.trigger": "sks"})
    launcher.fields["save.name"].value = "mine"  # only an intermediate save holds it
    before = tree_digest(ws.jobs)
    message = launcher.messages["save.name"].value
    assert "&#x27;mine&#x27; is taken" in message and f"lora-lab jobs rm {holder.id} --lora remove" in message
    launcher.train_button.click()
    assert launcher.job is None and tree_digest(ws.jobs) == before
    launcher.fields["save.name"].value = "mine-2"  # another name is free
    assert launcher.problems == {} and not launcher.train_button.disabled


def test_sample_prompts_and_their_interval_default_from_the_dataset_until_edited(ws, tiny_models):
    launcher = launcher_on(ws, tiny_models, **{"dataset.trigger": "sks", "train.max_steps": 400})
    assert launcher.values()["sample"]["prompts"] == [
        "sks", "sks, green circle, grass, sky", "sks, an orange triangle on a hill"]
    assert launcher.fields["sample.every_n_steps"].value == 100  # a quarter of 400
    launcher.fields["train.max_steps"].value = 3000
    assert launcher.fields["sample.every_n_steps"].value == 750
    assert "samples every 750 steps" in launcher.plan.value
    launcher.fields["dataset.trigger"].value = "shp"
    assert launcher.values()["sample"]["prompts"][:2] == ["shp", "shp, green circle, grass, sky"]
    launcher.fields["sample.every_n_steps"].value = 500  # edited: the user's from now on
    launcher.fields["sample.prompts"].value = "shp, a red circle"
    launcher.fields["train.max_steps"].value = 800
    launcher.fields["dataset.trigger"].value = "sks"
    assert launcher.fields["sample.every_n_steps"].value == 500
    assert launcher.values()["sample"]["prompts"] == ["shp, a red circle"]


def test_the_preset_follows_the_base_models_family_until_the_user_picks_one(ws, tiny_models):
    launcher = TrainingLauncher(str(tiny_models["samples"]), str(tiny_models["sdxl"]), workspace=ws,
                                autostart=False)
    assert launcher.preset.value == "sdxl" and launcher.fields["dataset.resolution"].value == 1024
    launcher.fields["model.base"].value = str(tiny_models["sd15"])
    assert launcher.preset.value == "sd15" and "SD 1.5 changed" in launcher.preset_changes.value
    launcher.preset.value = "sd15-lowvram"  # the user's choice from now on
    launcher.fields["model.base"].value = str(tiny_models["sdxl_file"])
    assert launcher.preset.value == "sd15-lowvram"
    assert "model.family" in launcher.problems  # the preset's sd15 against an SDXL model, said
