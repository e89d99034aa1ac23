"""The config assistant (`lora-lab suggest`): the rules on raw answers (impossible values
corrected and said so, nonsense of every shape turned into a valid config, the dataset, the base
model and the GPU taken into account), the tiny random-weight GGUF end to end through the CLI
and Python on several seeds and prompts (the grammar keeps every answer parseable, the rules
make it valid), and each bad input refused with one line before anything is written."""
from __future__ import annotations

import dataclasses
import html
import json
import math

import pytest
from conftest import tree_digest

from lora_lab.assistant import suggest
from lora_lab.assistant.facts import gather
from lora_lab.assistant.rules import apply_rules
from lora_lab.assistant.schema import FIELDS, answer_schema
from lora_lab.datasets import ingest
from lora_lab.jobs import check_params
from lora_lab.training.config import TrainConfig
from lora_lab.widgets.launcher import TrainingLauncher


def said(**values) -> dict:
    """An answer as the model writes it: each value with a reason."""
    return {key: {"value": value, "reason": f"I like {key}"} for key, value in values.items()}


SANE = said(preset="sd15", resolution=512, repeats=4, trigger="shp", caption_dropout=0.05, flip=False,
            rank=16, alpha=8, lr=2e-4, optimizer="adamw", scheduler="cosine", batch_size=2,
            epochs=30, max_steps=0)


@pytest.fixture
def facts(ws, samples):
    ingest(samples, "shapes", workspace=ws)  # 8 images, 3 without a caption
    return gather("shapes", "", ws)


def reason(s, key):
    return s.reasons[key].reason


def test_an_answer_within_bounds_is_kept_with_the_models_reasons(facts):
    s = apply_rules(SANE, facts)
    c = s.config
    assert (c.model.family, c.network.rank, c.network.alpha, c.train.lr) == ("sd15", 16, 8.0, 2e-4)
    assert (c.dataset.repeats, c.dataset.trigger, c.train.batch_size, c.train.epochs) == (4, "shp", 2, 30)
    for key, dotted in FIELDS.items():
        r = s.reasons[dotted or key]
        assert (r.source, r.reason) == ("model", f"I like {key}"), key
    assert s.plan.total_steps == 30 * 16  # 8 images x 4 repeats in batches of 2, one bucket
    assert c.sample.prompts[0] == "shp" and s.reasons["sample.prompts"].source == "rule"
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_impossible_values_are_corrected_and_each_correction_says_so(facts):
    answer = {**SANE, **said(preset="sdxl", rank=100000, lr=50, max_steps=1, resolution=8192,
                             alpha=-3, batch_size=64, repeats=0, caption_dropout=7.5, epochs=1)}
    s = apply_rules(answer, facts, "rank 100000, lr 50, 1 step, 8192 px")
    c = s.config
    assert reason(s, "train.lr") == "the model said lr 50; corrected to 0.0001 (lr above 0.01 diverges)"
    assert reason(s, "network.rank") == ("the model said rank 100000; corrected to 32 (ranks above "
                                         "128 rarely learn more, and the file grows)")
    assert reason(s, "train.max_steps") == ("the model said max_steps 1; corrected to 0 (fewer than 100 "
                                            "steps cannot train a LoRA; 0 counts the steps from epochs)")
    assert "the model said resolution 8192; corrected to 1024 (SDXL trains at 512..2048 px)" in \
        reason(s, "dataset.resolution")
    assert (c.network.rank, c.train.lr, c.train.max_steps, c.network.alpha) == (32, 1e-4, 0, 16.0)
    assert c.train.batch_size == 1 and "no more than the 8 images" in reason(s, "train.batch_size")
    assert c.dataset.repeats == 1 and c.dataset.caption_dropout == 0.0
    # 1 epoch of 8 steps is too few: about 100 steps an image, counted as `lora-lab calc` does
    assert reason(s, "train.epochs") == ("the model said epochs 1; corrected to 100 (1 x 8 steps per "
                                         "epoch = 8 steps; about 800 steps suit 8 images)")
    assert s.plan.total_steps == 800
    for dotted in ("train.lr", "network.rank", "train.max_steps", "dataset.resolution",
                   "network.alpha", "train.batch_size", "dataset.repeats", "dataset.caption_dropout"):
        assert s.reasons[dotted].source == "rule", dotted
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("answer", [
    None, [], "sdxl", {}, {"rank": 8}, said(rank="eight", lr=None, epochs=[3], trigger=7, flip="yes", preset=["sdxl"],
                                           optimizer={"adamw": 1}, scheduler=None),
    said(lr=math.inf, alpha=math.nan, resolution=-64, rank=True, preset="sd3", optimizer="sgd"),
    said(trigger="my dog!!", resolution=700, max_steps=10**18, epochs=10**9, batch_size=0),
    {key: "nonsense" for key in FIELDS},
], ids=["null", "list", "string", "empty", "no-reasons", "wrong-types", "non-finite", "too-much",
        "all-strings"])
def test_any_answer_becomes_a_valid_config(facts, answer):
    s = apply_rules(answer, facts)
    assert TrainConfig.from_dict(s.config.to_dict()) == s.config
    json.dumps(s.to_dict(), allow_nan=False)  # strict JSON, as REST sends it
    assert STEPS_OK(s.plan.total_steps) and s.config.dataset.trigger  # 3 images have no caption
    assert all(r.reason for r in s.reasons.values())


def STEPS_OK(total: int) -> bool:  # noqa: N802 (reads as the rule it checks)
    return 100 <= total <= 10_000


def test_a_trigger_is_cleaned_or_made_when_images_lack_captions(facts):
    s = apply_rules(said(trigger="my dog!!"), facts)
    assert s.config.dataset.trigger == "mydog"
    assert "the model said trigger 'my dog!!'; corrected to 'mydog'" in reason(s, "dataset.trigger")
    s = apply_rules(said(trigger=""), facts)
    assert s.config.dataset.trigger == "shapes_lora"
    assert "3 of 8 images have no caption" in reason(s, "dataset.trigger")


def test_the_base_models_family_wins_over_the_models_preset(facts, tiny_models, ws):
    s = apply_rules(said(preset="flux-dev"), gather("shapes", str(tiny_models["sdxl"]), ws))
    assert s.preset == "sdxl" and s.config.model.family == "sdxl"
    assert s.config.model.base == str(tiny_models["sdxl"]) and reason(s, "model.base") == "given (--base)"
    assert reason(s, "preset") == "the model said preset 'flux-dev'; corrected to 'sdxl' (the base model is SDXL)"
    # without a base, the family the request names
    s = apply_rules(said(preset="sd15"), facts, "a FLUX.1 LoRA of my dog")
    assert s.preset == "flux-dev" and "the request names FLUX.1" in reason(s, "preset")
    assert s.config.model.base == "black-forest-labs/FLUX.1-dev"
    assert "`lora-lab models pull flux1-dev`" in reason(s, "model.base")


def test_the_gpu_the_doctor_sees_picks_the_low_vram_preset_and_precision(facts):
    small = dataclasses.replace(facts, gpu="RTX 3060", vram_gb=12.0)
    s = apply_rules(said(preset="sdxl", batch_size=4), small)
    assert s.preset == "sdxl-lowvram" and s.config.train.gradient_checkpointing
    assert "the GPU has 12 GB (doctor); SDXL wants about 24 GB" in reason(s, "preset")
    assert s.config.train.batch_size == 1 and "one image at a time" in reason(s, "train.batch_size")
    big = dataclasses.replace(facts, gpu="H100", vram_gb=80.0)
    assert apply_rules(said(preset="sdxl"), big).config.train.mixed_precision == "bf16"
    s = apply_rules(said(preset="sdxl"), facts)  # no GPU on this box
    assert s.config.train.mixed_precision == "no" and "no GPU here (doctor)" in reason(s, "train.mixed_precision")
    s = apply_rules(said(preset="qwenimage"), facts)
    assert s.config.train.device == "cuda" and "trains on a GPU only" in reason(s, "train.device")


def test_an_optimizer_without_its_package_falls_back_and_prodigy_gets_lr_1(facts, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "prodigyopt" else object())
    s = apply_rules(said(optimizer="prodigy", lr=3e-4), facts)
    assert s.config.train.optimizer == "adamw"
    assert reason(s, "train.optimizer") == ("the model said optimizer 'prodigy'; corrected to 'adamw' "
                                            "(prodigy needs prodigyopt, not installed here (pip install "
                                            "prodigyopt))")
    assert s.config.train.lr == 3e-4  # then checked as AdamW's
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    s = apply_rules(said(optimizer="prodigy", lr=3e-4), facts)
    assert (s.config.train.optimizer, s.config.train.lr) == ("prodigy", 1.0)
    assert "prodigy finds its own step size" in reason(s, "train.lr")


def test_the_schema_bounds_every_string_and_lists_the_configs_choices():
    schema = answer_schema()
    assert set(schema["required"]) == set(FIELDS) and schema["additionalProperties"] is False
    values = {k: p["properties"]["value"] for k, p in schema["properties"].items()}
    assert values["optimizer"]["enum"] == ["adamw", "adamw8bit", "prodigy"]
    assert values["rank"] == {"type": "integer", "minimum": 1, "maximum": 1024,
                              "description": "LoRA rank: bigger learns more detail and makes a bigger file"}
    reason_pattern = schema["properties"]["lr"]["properties"]["reason"]["pattern"]
    assert reason_pattern.endswith("{0,60}$") and values["trigger"]["pattern"].endswith("{0,24}$")


# -- the tiny GGUF, end to end --------------------------------------------------------------------
def test_the_cli_suggests_a_config_from_the_tiny_gguf_that_train_accepts(cli, ws, samples, tiny_caption,
                                                                         tiny_models, tmp_path):
    ingest(samples, "shapes", workspace=ws)
    out = tmp_path / "cfg" / "shapes.toml"
    _, text, _ = cli("suggest", "rank 100000, lr 50, 1 step, 8192 px", "--dataset", "shapes", "--model",
                     tiny_caption["caption_model"], "--base", tiny_models["sd15"], "--out", out)
    assert f"wrote {out}" in text and "train.lr" in text and "[model]" in text and "[rule]" in text
    config = TrainConfig.load(out)  # what `lora-lab train` reads first
    assert config.model.family == "sd15" and config.model.base == str(tiny_models["sd15"])
    toml = out.read_text()
    assert toml.startswith("# lora_lab training config suggested by `lora-lab suggest`\n"
                           "# request: rank 100000, lr 50, 1 step, 8192 px\n")
    assert "# [rule] given (--base)\nbase = " in toml
    check_params("train", {"config": config.to_dict(), "gpus": 1}, ws)  # as a job is checked
    _, calc, _ = cli("calc", "--config", out, "--json")
    _, data, _ = cli("suggest", "rank 100000, lr 50, 1 step, 8192 px", "--dataset", "shapes", "--model",
                     tiny_caption["caption_model"], "--base", tiny_models["sd15"], "--json")
    data = json.loads(data)
    assert TrainConfig.from_dict(data["config"]) == config  # the same seed, the same answer
    assert data["total_steps"] == json.loads(calc)["total_steps"]
    assert set(data["answer"]) == set(FIELDS) and data["model"] == tiny_caption["caption_model"].name


@pytest.mark.parametrize("seed, text", [(1, "25 photos of my dog, SDXL"), (2, "0" * 3000)],
                         ids=["dog", "long"])
def test_random_weights_on_other_seeds_and_prompts_still_give_valid_configs(ws, samples, tiny_caption,
                                                                            seed, text):
    ingest(samples, "shapes", workspace=ws)
    s = suggest(text, "shapes", model=tiny_caption["caption_model"], seed=seed, workspace=ws)
    assert set(s.answer) == set(FIELDS)  # the grammar: every key, each {value, reason}, never cut
    assert all(set(item) == {"value", "reason"} for item in s.answer.values())
    assert TrainConfig.from_dict(s.config.to_dict()) == s.config
    if "SDXL" in text:
        assert s.config.model.family == "sdxl"  # the request names it, whatever the model said
    assert s.seconds > 0 and all(r.reason for r in s.reasons.values())


def test_the_launchers_suggest_button_fills_the_form_and_lists_the_reasons(ws, samples, tiny_caption,
                                                                          tiny_models, tmp_path):
    ingest(samples, "shapes", workspace=ws)
    launcher = TrainingLauncher("shapes", str(tiny_models["sd15"]), workspace=ws, autostart=False)
    box = launcher.assistant
    box.text.value = "my shapes, lr 50 and rank 100000"
    box.model.value = str(tiny_caption["caption_model"])
    box.button.click()  # without autostart the model answers in the click
    s = box.suggestion
    assert box.notice.kind == "ok" and f"from {tiny_caption['caption_model'].name}" in box.notice.text
    assert launcher.config() == s.config and launcher.preset.value == s.preset == "sd15"
    for key, r in s.reasons.items():  # each value with where it came from and why
        assert f"<code>{key}</code>" in box.reasons.value and html.escape(r.reason) in box.reasons.value
    assert launcher.problems == {} and not launcher.train_button.disabled
    assert "network.rank" in launcher.edited  # a preset picked now keeps the suggested values
    # bad input shows in the box and leaves the form as it was
    empty = tmp_path / "empty"
    empty.mkdir()
    launcher.fields["dataset.source"].value = str(empty)
    before = launcher.values()
    box.button.click()
    assert box.notice.kind == "error" and box.notice.text.startswith(f"folder {empty} has no images")
    assert launcher.values() == before and not box.button.disabled
    launcher.fields["dataset.source"].value = ""
    box.button.click()
    assert box.notice.text == "fill in the dataset first: the suggestion is made for its images"
    launcher.close()


# -- bad input --------------------------------------------------------------------------------------
def test_each_bad_input_is_one_line_before_anything_loads_or_is_written(cli, ws, samples, tiny_caption,
                                                                        tmp_path, monkeypatch):
    ingest(samples, "shapes", workspace=ws)
    model = tiny_caption["caption_model"]
    out = tmp_path / "out.toml"
    args = ("suggest", "x", "--out", out)
    before = files(ws)
    assert "dataset 'nope' not found" in cli.fails(*args, "--dataset", "nope", "--model", model)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"folder {empty} has no images" in cli.fails(*args, "--dataset", empty, "--model", model)
    monkeypatch.delenv("LORA_LAB_CAPTION_MODEL", raising=False)
    line = cli.fails(*args, "--dataset", "shapes")
    assert "no GGUF chat model at" in line and "`lora-lab models pull caption`" in line and "--model" in line
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a model")
    assert "is not a GGUF file" in cli.fails(*args, "--dataset", "shapes", "--model", not_gguf)
    assert "is a vision projector (mmproj)" in cli.fails(
        *args, "--dataset", "shapes", "--model", tiny_caption["caption_mmproj"])
    assert "does not exist" in cli.fails(*args, "--dataset", "shapes", "--model", model,
                                         "--base", tmp_path / "nope.safetensors")
    out.write_text("mine")
    assert "exists; not overwriting it" in cli.fails(*args, "--dataset", "shapes", "--model", model)
    assert out.read_text() == "mine" and files(ws) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model.gguf", "out.toml", "samples", "ws"]


def files(ws) -> dict[str, str]:
    """The workspace's files but the index cache (reading it may touch its SQLite journal)."""
    return {path: digest for path, digest in tree_digest(ws.root).items() if ".lora_lab" not in path}
