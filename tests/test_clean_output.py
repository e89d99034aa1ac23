"""Clean output: progress as whole lines where stderr is no terminal, no library noise in what
users read (command output, job logs, executed notebooks), and no processors loaded for nothing."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bare_env

from lora_lab.cli.output import progress_bar, progress_end, progress_note

BIN = Path(sys.executable).parent


def test_progress_on_a_non_terminal_prints_a_line_every_tenth_and_the_last(capsys):
    for step in range(1, 101):
        progress_bar(step, 100, "loss 0.1")
    progress_end()  # nothing to end: no line was left open
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split()[1] for line in err.splitlines()] == ["1/100", *(f"{n}/100" for n in
                                                                         range(10, 101, 10))]
    for step in range(1, 4):  # a new run starts counting again
        progress_bar(step, 3, "")
    progress_note("exporting...")
    *steps, note = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in steps] == ["1/3", "2/3", "3/3"] and note == "exporting..."


def test_captioning_to_a_pipe_prints_only_whole_progress_lines(tmp_path, tiny_caption):
    env = bare_env(LORA_LAB_HOME=str(tmp_path / "ws"), PATH=str(BIN))
    run = lambda *a: subprocess.run([str(BIN / "lora-lab"), *map(str, a)], env=env,  # noqa: E731
                                    capture_output=True, text=True)
    assert run("dataset", "ingest", tiny_caption["samples"], "--name", "s").returncode == 0
    out = run("caption", "s", "--model", tiny_caption["caption_model"], "--mmproj",
              tiny_caption["caption_mmproj"], "--mode", "overwrite", "--max-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr
    lines = out.stderr.splitlines()
    assert lines and all(line.startswith("[") and " img/s " in line for line in lines), lines
    assert lines[-1].startswith(f"[{'#' * 30}] 8/8 ")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="with torchvision, transformers has no fallback to warn about")
def test_the_torchvision_fallback_warning_is_dropped_and_nothing_else():
    code = ("import logging, sys; {} import transformers; transformers.CLIPImageProcessor; "
            "logging.getLogger('transformers.utils.import_utils').warning('another warning')")
    plain = subprocess.run([sys.executable, "-c", code.format("")], capture_output=True, text=True)
    assert "`CLIPImageProcessor` requires torchvision" in plain.stderr  # what users saw before
    ours = subprocess.run([sys.executable, "-c", code.format("import lora_lab;")],
                          capture_output=True, text=True, check=True)
    assert "torchvision" not in ours.stderr and "another warning" in ours.stderr


def test_the_base_model_skips_the_image_processor_the_trainer_never_uses(tmp_path, tiny_models):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessorPil

    from lora_lab.training.base_model import load_base_model

    folder = shutil.copytree(tiny_models["sd15"], tmp_path / "sd15")
    CLIPImageProcessorPil().save_pretrained(folder / "feature_extractor")
    index = json.loads((folder / "model_index.json").read_text())
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index))
    loaded = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    assert loaded.feature_extractor is not None  # diffusers would load it
    pipe = load_base_model(str(folder), "sd15").pipeline
    assert pipe.feature_extractor is None and pipe.image_encoder is None
