"""The command as a user runs it: help everywhere, the real console script, a light import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
    env = {"LORA_LAB_HOME": str(tmp_path / "ws"), "PATH": str(BIN)}
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
            "heavy = {'torch', 'diffusers', 'transformers', 'llama_cpp'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
