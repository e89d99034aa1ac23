"""Export to kohya layout / zip, and the steps calculator."""
from __future__ import annotations

import json
import tomllib
import zipfile

import pytest

from lora_lab.calc import plan_steps
from lora_lab.datasets import Dataset


@pytest.fixture
def shapes(cli, samples) -> str:
    cli("dataset", "ingest", samples, "--name", "shapes")
    return "shapes"


def test_kohya_export_layout_and_toml(cli, ws, shapes):
    before = {f: Dataset.open(shapes, ws).caption(f) for f in ("red_circle.jpg", "purple_square.jpg")}
    out = json.loads(cli("dataset", "export", shapes, "--trigger", "shp", "--repeats", "5",
                         "--family", "sdxl", "--json")[1])
    root = ws.exports / "shapes-kohya"
    assert out["out"] == str(root) and out["subset"] == "5_shp"
    subset = root / "5_shp"
    assert len(list(subset.glob("*.txt"))) == 8 and len(list(subset.glob("*.[jpw]*"))) == 8
    assert (subset / "red_circle.txt").read_text() == "shp, a red circle above green grass"
    assert (subset / "purple_square.txt").read_text() == "shp"
    config = tomllib.loads((root / "dataset.toml").read_text())
    assert config["datasets"][0]["resolution"] == 1024
    sub = config["datasets"][0]["subsets"][0]
    assert sub == {"image_dir": str(subset), "num_repeats": 5, "class_tokens": "shp"}
    ds = Dataset.open(shapes, ws)  # the dataset itself is unchanged
    assert {f: ds.caption(f) for f in before} == before
    assert not [p for p in ws.exports.iterdir() if p.name.startswith(".")]  # no temp left


def test_zip_export(cli, ws, shapes):
    cli("dataset", "export", shapes, "--format", "zip", "--out", "mine.zip")
    with zipfile.ZipFile(ws.exports / "mine.zip") as zf:
        names = zf.namelist()
        config = tomllib.loads(zf.read("dataset.toml").decode())
    assert "10_shapes/red_circle.jpg" in names and "10_shapes/red_circle.txt" in names
    assert config["datasets"][0]["subsets"][0]["image_dir"] == "10_shapes"


def test_export_bad_input(cli, shapes):
    cli("dataset", "export", shapes)
    assert "already exists" in cli.fails("dataset", "export", shapes)
    assert "outside the workspace" in cli.fails("dataset", "export", shapes, "--out", "../../x")
    assert "repeats must be" in cli.fails("dataset", "export", shapes, "--repeats", "0", "--out", "r")
    assert "invalid trigger word" in cli.fails("dataset", "export", shapes, "--trigger", "a/b",
                                               "--out", "t")
    assert "does not exist" in cli.fails("dataset", "export", "nope")


def test_calc(cli, shapes):
    rc, out, _ = cli("calc", "--images", "20", "--repeats", "10", "--epochs", "10", "--batch", "3")
    assert "= 67 steps per epoch" in out and "= 670 steps" in out
    plan = json.loads(cli("calc", "--dataset", shapes, "--repeats", "3", "--batch", "2",
                          "--grad-accum", "2", "--epochs", "2", "--json")[1])
    # sd15 buckets of 6, 6, 9 and 3 samples: 3 + 3 + 5 + 2 = 13 batches, 7 steps of 2
    assert plan["samples_per_epoch"] == 24 and plan["steps_per_epoch"] == 7
    assert plan["total_steps"] == 14
    assert plan_steps([1]).total_steps == 1
    assert "batch_size must be" in cli.fails("calc", "--images", "5", "--batch", "0")
