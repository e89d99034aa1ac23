"""The command as a user runs it: help everywhere, the real console script, a light import."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import bare_env

from lora_lab.cli import build_parser, main

BIN = Path(sys.executable).parent


def _commands(parser, prefix=()):
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            yield prefix + (name,)
            yield from _commands(sub, prefix + (name,))


@pytest.mark.parametrize("command", list(_commands(build_parser())))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0 and "usage: lora-lab" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2 and "commands" in capsys.readouterr().out


def test_console_script_end_to_end(tmp_path, samples):
    env = bare_env(LORA_LAB_HOME=str(tmp_path / "ws"), PATH=str(BIN))
    run = lambda *a: subprocess.run([str(BIN / "lora-lab"), *a], env=env, capture_output=True,  # noqa: E731
                                    text=True)
    ok = run("dataset", "ingest", str(samples), "--name", "s")
    assert ok.returncode == 0 and "added 8 images" in ok.stdout
    bad = run("dataset", "show", "missing")
    assert bad.returncode == 1 and bad.stderr.strip() == \
        "lora-lab: error: dataset 'missing' does not exist (see `lora-lab dataset list`)"
    assert "s\t8 images\t5 captioned" in run("dataset", "list").stdout


def test_import_is_light():
    code = ("import sys, lora_lab, lora_lab.datasets, lora_lab.cli; "
            "heavy = {'torch', 'diffusers', 'transformers', 'llama_cpp', 'ray'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_training_runs_the_steps_calc_counts_and_prints_whole_lines_to_a_pipe(tmp_path, tiny_models):
    """Uneven buckets (3 wide, 3 tall, batches of 2): calc and the trainer agree on 4 steps an
    epoch where ceil(6 / 2) says 3; stderr, a pipe here, gets whole lines and nothing else."""
    from test_calc import write_images

    from lora_lab.training.config import TrainConfig

    folder = write_images(tmp_path / "uneven", [(192, 64)] * 3 + [(64, 192)] * 3)
    path = TrainConfig.from_dict({
        "model": {"base": str(tiny_models["sd15"])},
        "dataset": {"source": str(folder), "resolution": 128, "min_bucket": 64, "max_bucket": 256},
        "network": {"rank": 4}, "train": {"batch_size": 2, "epochs": 3, "lr": 1e-3}}
    ).write(tmp_path / "run.toml")
    env = bare_env(LORA_LAB_HOME=str(tmp_path / "ws"), PATH=str(BIN), HF_HUB_OFFLINE="1")
    run = lambda *a: subprocess.run([str(BIN / "lora-lab"), *map(str, a)], env=env,  # noqa: E731
                                    capture_output=True, text=True)
    calc = run("calc", "--config", path, "--json")
    assert calc.returncode == 0, calc.stderr
    assert json.loads(calc.stdout)["total_steps"] == 12
    train = run("train", path)
    assert train.returncode == 0, train.stderr
    assert "trained 12 steps" in train.stdout
    assert "\r" not in train.stderr
    lines = train.stderr.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    phases = ["validating...", "loading dataset...", "preparing model...", "caching...", "exporting..."]
    if not torch.cuda.is_available():  # the run says it fell back to the CPU, as a warning line
        phases.insert(1, next(line for line in lines if line.startswith("warning: training on the CPU")))
    assert [line for line in lines if line not in progress] == phases
    assert 1 < len(progress) <= 12 and progress[-1].startswith(f"[{'#' * 30}] 12/12 loss ")
