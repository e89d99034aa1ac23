"""One step count for `lora-lab calc`, the launcher and the trainer: batches never mix aspect-ratio
buckets, so uneven buckets need more steps than images x repeats / batch."""
from __future__ import annotations

import json

import pytest
from conftest import jpeg_bytes

from lora_lab.calc import plan_steps
from lora_lab.errors import LoraLabError
from lora_lab.training.config import TrainConfig
from lora_lab.training.data import BatchPlan, CaptionRules, assign_buckets, gather_images
from lora_lab.widgets.launcher import TrainingLauncher


def write_images(folder, sizes, caption="a shape"):
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(size, seed=i))
        (folder / f"{i}.txt").write_text(caption)
    return folder


@pytest.fixture
def uneven(tmp_path):
    """3 wide and 3 tall images: two buckets of 3, which batches of 2 cannot fill evenly."""
    return write_images(tmp_path / "uneven", [(192, 64)] * 3 + [(64, 192)] * 3)


def test_plan_steps_counts_each_bucket_apart():
    two = plan_steps([3, 3], batch_size=2)
    assert (two.batches_per_epoch, two.steps_per_epoch, two.total_steps) == (4, 4, 4)
    assert plan_steps([6], batch_size=2).steps_per_epoch == 3  # one bucket: ceil(6 / 2)
    assert plan_steps([3, 2], batch_size=2).steps_per_epoch == 3
    accum = plan_steps([3, 3, 1], batch_size=2, grad_accum=2, epochs=3)
    assert (accum.batches_per_epoch, accum.steps_per_epoch, accum.total_steps) == (5, 3, 9)
    world = plan_steps([3, 3, 1], batch_size=2, world=2)  # 5 batches padded to 6, 3 per process
    assert (world.batches_per_epoch, world.steps_per_epoch) == (6, 3)
    capped = plan_steps([3, 3], batch_size=2, epochs=10, max_steps=7)
    assert capped.total_steps == 7 and "max steps 7 wins: about 1.8 epochs" in capped.explain()
    assert "2 buckets (3, 3)" in two.explain() and "= 4 steps per epoch" in two.explain()


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
    ({"grad_accum": -1}, "grad_accum must be"),
    ({"world": 0}, "world must be"),
    ({"epochs": 1.5}, "epochs must be"),
    ({"max_steps": -1}, "max_steps must be a whole number >= 0"),
    ({"bucket_samples": [3, -1]}, "bucket sample count must be"),
    ({"bucket_samples": []}, "no samples to train on"),
    ({"bucket_samples": [0, 0]}, "no samples to train on"),
])
def test_plan_steps_refuses_bad_numbers(kwargs, message):
    with pytest.raises(LoraLabError, match=message):
        plan_steps(**{"bucket_samples": [4], **kwargs})


def test_the_batch_plan_runs_the_batches_plan_steps_counts(uneven):
    images = gather_images(str(uneven))
    buckets = assign_buckets(images, 128, 64, 256)
    assert sorted(set(buckets)) == [(64, 192), (192, 64)]
    plan = BatchPlan(images, buckets, batch_size=2, seed=0)
    batches = [plan.samples(k, CaptionRules()) for k in range(plan.batches_per_epoch)]
    assert plan.batches_per_epoch == 4 and sorted(map(len, batches)) == [1, 1, 2, 2]


def test_calc_cli_counts_the_buckets_of_a_folder_and_a_dataset(cli, uneven):
    flat = json.loads(cli("calc", "--images", "6", "--batch", "2", "--json")[1])
    assert flat["total_steps"] == 3
    out = cli("calc", "--dataset", uneven, "--batch", "2", "--epochs", "5")[1]
    assert "6 images x 1 repeats = 6 samples per epoch in 2 buckets (3, 3)" in out
    assert "= 4 steps per epoch; x 5 epochs = 20 steps" in out
    cli("dataset", "ingest", uneven, "--name", "uneven")
    by_name = json.loads(cli("calc", "--dataset", "uneven", "--batch", "2", "--json")[1])
    assert by_name["bucket_samples"] == [3, 3] and by_name["total_steps"] == 4
    two = json.loads(cli("calc", "--dataset", "uneven", "--batch", "2", "--gpus", "4", "--json")[1])
    assert two["batches_per_epoch"] == 4 and two["steps_per_epoch"] == 1


def test_calc_cli_reads_kohya_folder_repeats(cli, tmp_path):
    root = tmp_path / "kohya"
    write_images(root / "3_sks", [(192, 64)])
    write_images(root / "1_other", [(64, 192)] * 2)
    plan = json.loads(cli("calc", "--dataset", root, "--batch", "2", "--json")[1])
    assert plan["bucket_samples"] == [2, 3] and plan["steps_per_epoch"] == 3
    assert "3 images x their folders' repeats = 5 samples" in cli("calc", "--dataset", root)[1]


def test_calc_cli_with_a_config_and_flags_that_override_it(cli, tiny_models, uneven, tmp_path):
    path = TrainConfig.from_dict({
        "model": {"base": str(tiny_models["sd15"])},
        "dataset": {"source": str(uneven), "resolution": 128, "min_bucket": 64, "max_bucket": 256},
        "train": {"batch_size": 2, "epochs": 3}}).write(tmp_path / "run.toml")
    assert json.loads(cli("calc", "--config", path, "--json")[1])["total_steps"] == 12
    again = json.loads(cli("calc", "--config", path, "--batch", "3", "--max-steps", "5", "--json")[1])
    assert again["steps_per_epoch"] == 2 and again["total_steps"] == 5


def test_calc_cli_bad_input(cli, uneven, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "batch_size must be" in cli.fails("calc", "--images", "5", "--batch", "0")
    assert "--images must be at least 1, not 0" in cli.fails("calc", "--images", "0")
    assert "--repeats must be at least 1" in cli.fails("calc", "--images", "3", "--repeats", "0")
    assert "--gpus must be at least 1, not 0" in cli.fails("calc", "--images", "3", "--gpus", "0")
    assert "--resolution need --dataset or --config" in cli.fails("calc", "--images", "3",
                                                                  "--resolution", "512")
    assert "neither a dataset" in cli.fails("calc", "--dataset", "nope")
    assert "has no images" in cli.fails("calc", "--dataset", tmp_path / "empty")
    assert "train.batch_size: 0 is out of range" in cli.fails("calc", "--dataset", uneven,
                                                              "--batch", "0")
    assert "dataset.resolution: 100 is not a multiple of 64" in cli.fails(
        "calc", "--dataset", uneven, "--resolution", "100")
    assert "no such file" in cli.fails("calc", "--config", tmp_path / "missing.toml")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert "cannot train on" in cli.fails("calc", "--dataset", tmp_path)


def test_the_launcher_counts_buckets_as_calc_does(ws, cli, tiny_models, uneven, tmp_path):
    launcher = TrainingLauncher(str(uneven), str(tiny_models["sd15"]), workspace=ws, autostart=False)
    launcher.fields["train.batch_size"].value = 2
    launcher.fields["train.epochs"].value = 5
    assert launcher.problems == {}
    assert launcher.steps == 20 and "2 buckets (3, 3)" in launcher.plan.value  # not 5 x ceil(6/2)
    launcher.toml_path.value = str(tmp_path / "run.toml")
    launcher.save_button.click()
    assert json.loads(cli("calc", "--config", tmp_path / "run.toml", "--json")[1])["total_steps"] == 20
    launcher.fields["train.max_steps"].value = 7
    assert launcher.steps == 7 and "max steps 7 wins" in launcher.plan.value


def test_calc_holds_out_named_images_of_kohya_folders(cli, tmp_path):
    root = tmp_path / "kohya"
    write_images(root / "3_sks", [(192, 64)] * 2)
    write_images(root / "1_other", [(64, 192)] * 2)
    path = TrainConfig.from_dict({
        "model": {"base": "-", "family": "sd15"},
        "dataset": {"source": str(root), "resolution": 128, "min_bucket": 64, "max_bucket": 256},
        "validation": {"images": ["3_sks/0.jpg"]}}).write(tmp_path / "run.toml")
    plan = json.loads(cli("calc", "--config", path, "--json")[1])
    assert plan["bucket_samples"] == [2, 3] and plan["held_out"] == 1  # 3_sks/0.jpg's 3 repeats gone
    assert "3 images (1 more held out for validation) x their folders' repeats" in cli("calc", "--config", path)[1]


def test_the_launcher_counts_without_the_held_out_images(ws, tiny_models):
    launcher = TrainingLauncher(str(tiny_models["samples"]), str(tiny_models["sd15"]), workspace=ws,
                                autostart=False)
    for dotted, value in {"dataset.resolution": 64, "dataset.trigger": "sks", "train.batch_size": 1, "train.epochs": 1,
                          "train.max_steps": 0}.items():
        launcher.fields[dotted].value = value
    assert launcher.steps == 8
    launcher.fields["validation.split"].value = 0.25
    assert launcher.problems == {}
    assert launcher.steps == 6 and "6 images (2 more held out for validation)" in launcher.plan.value
