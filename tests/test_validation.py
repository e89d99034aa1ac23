"""Validation during training: held-out images never trained on, a loss that is the same in
every run and after a resume, fixed-seed validation images, the best checkpoint kept past
save.keep_last, val/loss in TensorBoard, and a split that leaves nothing to train refused
before a job exists."""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil

import pytest
import tomli_w
from safetensors.torch import load_file
from test_tracking import read_events
from test_train import config
from test_train_resume import _same_weights
from test_widgets_jobs import tiny_form

from lora_lab import Workspace
from lora_lab.cli import main
from lora_lab.jobdir import JobRecord, list_jobs
from lora_lab.training.data import gather_images, hold_out
from lora_lab.training.job import train
from lora_lab.training.lora_file import read_lora
from lora_lab.widgets import TrainingLauncher, TrainingMonitor

STEPS = 8
PROMPT = "sks, a red circle"


def _reference_config(tiny_models, **validation):
    # a learning rate this high makes the validation loss go up and down, so its best is not
    # the last step; dropout checks that validation draws nothing from the global RNG
    return config(tiny_models, train={"max_steps": STEPS, "lr": 1.0, "max_grad_norm": 0.0},
                  network={"rank": 4, "dropout": 0.1}, save={"every_n_steps": 2, "keep_last": 1},
                  sample={"steps": 2},
                  validation={"split": 0.25, "every_n_steps": 1, "prompts": [PROMPT], **validation})


def _validations(job: JobRecord) -> dict[int, dict]:
    """Each step's validation event (a resumed run's where it wrote one again)."""
    return {e["step"]: e for e in job.events() if e["type"] == "validation"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models):
    """An uninterrupted run validated at every step: (its workspace, job, CLI output)."""
    root = tmp_path_factory.mktemp("reference")
    ws = Workspace(root / "ws")
    path = _reference_config(tiny_models).write(root / "run.toml")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--workspace", str(ws.root), "train", str(path), "--json"]) == 0
    result = json.loads(out.getvalue())
    return ws, JobRecord(ws.jobs / result["job"]), result


def test_validation_events_samples_and_the_best_checkpoint(reference):
    ws, job, out = reference
    val = _validations(job)
    assert sorted(val) == list(range(1, STEPS + 1))
    losses = [val[s]["loss"] for s in sorted(val)]
    assert all(math.isfinite(x) for x in losses)
    best_so_far = [losses[i] < min(losses[:i], default=math.inf) for i in range(STEPS)]
    assert [val[s]["best"] for s in sorted(val)] == best_so_far
    for event in val.values():  # the shape other readers (the model card, the sidebar) rely on
        assert isinstance(event["step"], int) and isinstance(event["loss"], float)
        assert event["images"] == 2 and event["samples"] == [f"validation/step-{event['step']:06d}-0.png"]
        assert (job.path / event["samples"][0]).is_file()
    best = min(val, key=lambda s: val[s]["loss"])
    assert best < STEPS, "the run's validation loss must not fall to the end for this test"
    status = job.status()
    assert (status["best_step"], status["best_val_loss"]) == (best, val[best]["loss"])
    assert (out["best_step"], out["best_val_loss"]) == (best, val[best]["loss"])
    assert status["best_lora"] == out["best_lora"] == str(ws.loras / f"{_name(out)}-{best:06d}.safetensors")
    assert load_file(status["best_lora"])
    # keep_last = 1 keeps the newest checkpoint, and the best one besides
    newest = max(s for s in [*range(2, STEPS, 2), best])
    kept = sorted(p.name for p in (job.path / "checkpoints").iterdir())
    assert kept == sorted({f"step-{newest:06d}", f"step-{best:06d}"})
    assert json.loads((job.path / "checkpoints" / f"step-{best:06d}" / "state.json").read_text()
                      )["validation"] == {"best_step": best, "best_loss": pytest.approx(val[best]["loss"], abs=1e-6)}
    done = [e for e in job.events() if e["type"] == "done"][0]
    assert done["best_step"] == best
    # TensorBoard: val/loss at each validation, and the validation image
    acc = read_events(job)
    assert [s.step for s in acc.Scalars("val/loss")] == list(range(1, STEPS + 1))
    assert [s.value for s in acc.Scalars("val/loss")] == pytest.approx(losses, rel=1e-6)
    assert len(acc.Images("val/samples/0")) == STEPS


def _name(out: dict) -> str:
    return out["output"].rsplit("/", 1)[1].removesuffix(".safetensors")


def test_held_out_images_are_never_trained_on(reference, tiny_models):
    ws, job, out = reference
    _, meta = read_lora(out["output"])
    assert meta["ss_num_train_images"] == "6"  # 8 images, a quarter held out
    images = gather_images(str(tiny_models["samples"]))
    trained, held = hold_out(images, 0.25, ())
    assert len(held) == 2 and not {i.path for i in held} & {i.path for i in trained}
    shown = next(e["message"] for e in job.events() if e.get("message", "").startswith("2 images held out"))
    assert all(i.path.name in shown for i in held)
    # the same images whatever the order they are listed in
    assert {i.path for i in hold_out(images[::-1], 0.25, ())[1]} == {i.path for i in held}
    named = hold_out(images, 0.0, ("red_circle.jpg",))
    assert [i.path.name for i in named[1]] == ["red_circle.jpg"] and len(named[0]) == 7


def test_a_second_run_and_a_resumed_run_validate_the_same(ws, tiny_models, tmp_path, cli, reference):
    _, ref_job, ref_out = reference
    expected = {s: e["loss"] for s, e in _validations(ref_job).items()}

    def stop_at_checkpoint_4(event):
        if event["type"] == "checkpoint" and event["step"] == 4:
            raise KeyboardInterrupt("stopped for the test")

    job = JobRecord.create("train", {"config": _reference_config(tiny_models).to_dict(), "gpus": 1}, ws)
    with pytest.raises(KeyboardInterrupt):
        train(_reference_config(tiny_models), job, workspace=ws, on_event=stop_at_checkpoint_4)
    first = {s: e["loss"] for s, e in _validations(job).items()}
    assert first == {s: expected[s] for s in range(1, 5)}  # the same config: the same losses
    out = json.loads(cli("train", "--resume", job.id, "--json")[1])
    assert {s: e["loss"] for s, e in _validations(job).items()} == expected
    assert out["best_step"] == ref_out["best_step"]
    _same_weights(load_file(out["output"]), load_file(ref_out["output"]))


def test_validating_on_a_second_dataset_does_not_change_the_lora(cli, ws, tiny_models, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("red_circle.jpg", "blue_square.png", "blue_square.txt"):
        shutil.copy(tiny_models["samples"] / name, other / name)
    common = dict(train={"max_steps": 4}, network={"rank": 4, "dropout": 0.1}, sample={"steps": 2},
                  dataset={"flip": True, "shuffle_tags": True})
    plain = config(tiny_models, **common).write(tmp_path / "plain.toml")
    validated = config(tiny_models, **common, validation={"source": str(other), "every_n_steps": 1,
                                                          "prompts": [PROMPT]}).write(tmp_path / "val.toml")
    a = json.loads(cli("train", plain, "--json")[1])
    b = json.loads(cli("train", validated, "--json")[1])
    _same_weights(load_file(a["output"]), load_file(b["output"]))
    val = _validations(JobRecord(ws.jobs / b["job"]))
    assert sorted(val) == [1, 2, 3, 4] and all(e["images"] == 2 for e in val.values())
    assert "best_step" not in a and b["best_step"] in val


def test_a_flow_family_validates_named_images(cli, ws, tiny_flow, tmp_path):
    path = config(tiny_flow, "zimage", train={"max_steps": 4},
                  sample={"steps": 2, "guidance": 0.0},
                  validation={"images": ["red_circle.jpg"], "every_n_steps": 2, "draws": 2,
                              "prompts": [PROMPT]}).write(tmp_path / "run.toml")
    out = json.loads(cli("train", path, "--json")[1])
    job = JobRecord(ws.jobs / out["job"])
    val = _validations(job)
    assert sorted(val) == [2, 4] and all(math.isfinite(e["loss"]) and e["images"] == 1 for e in val.values())
    assert val[2]["best"] and all((job.path / p).is_file() for e in val.values() for p in e["samples"])
    assert read_lora(out["output"])[1]["ss_num_train_images"] == "7"
    assert [s.step for s in read_events(job).Scalars("val/loss")] == [2, 4]


@pytest.mark.parametrize("validation, message", [
    ({"split": 0.9}, "validation.split: holding out 1 of the 1 images in folder"),
    ({"images": ["only.jpg"]}, "validation.images: holding out 1 of the 1 images"),
    ({"images": ["nope.jpg"]}, "validation.images: nope.jpg is not in folder"),
    ({"source": "no-such-dataset"}, "validation.source: 'no-such-dataset' is neither a dataset"),
    ({"split": 0.5, "images": ["only.jpg"]}, "validation.images: set only one of"),
    ({"prompts": ["a"]}, "validation.prompts: validation needs images too"),
])
def test_validation_that_leaves_nothing_to_train_is_refused_before_a_job(cli, ws, tiny_models, tmp_path,
                                                                         validation, message):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(tiny_models["samples"] / "red_circle.jpg", one / "only.jpg")
    (one / "only.txt").write_text("a red circle")
    data = config(tiny_models, dataset={"source": str(one)}).to_dict()
    data["validation"] = validation
    toml = tmp_path / "run.toml"
    toml.write_text(tomli_w.dumps(data))
    for argv in (("train", toml), ("jobs", "submit", "train", toml)):
        line = cli.fails(*argv)
        assert message in line, line
        assert "no training images" in line or "holding out" not in message
    assert list_jobs(ws) == []


def test_the_monitor_shows_the_validation_curve_best_step_and_images(reference):
    ws, job, _ = reference
    monitor = TrainingMonitor(job, ws, autostart=False)
    best = job.status()["best_step"]
    assert "validation loss" in monitor.charts.value and monitor.charts.layout.display is None
    assert f"best {job.status()['best_val_loss']:.4f} at step {best}" in monitor.stats.value
    assert f"validation loss {_validations(job)[STEPS]['loss']:.4f} at step {STEPS}" in monitor.stats.value
    labels = [box.children[1].value for box in monitor.samples.children]
    assert labels[-1] == f"<small>step {STEPS}: validation: {PROMPT}</small>"
    assert monitor.follower.curves.val.points()[0] == (1, _validations(job)[1]["loss"])
    monitor.close()


def test_the_launcher_has_the_validation_fields_and_refuses_a_split_that_leaves_nothing(ws, tiny_models,
                                                                                       tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(tiny_models["samples"] / "red_circle.jpg", one / "only.jpg")
    (one / "only.txt").write_text("a red circle")
    launcher = tiny_form(TrainingLauncher(str(one), str(tiny_models["sd15"]), workspace=ws,
                                          autostart=False))
    launcher.fields["validation.split"].value = 0.5
    assert "leaves no training images" in launcher.messages["validation.split"].value
    assert launcher.train_button.disabled
    launcher.train_button.click()
    assert launcher.job is None and not list(ws.jobs.iterdir())
    launcher.fields["validation.split"].value = 0.0
    assert launcher.problems == {}
    launcher.close()


def test_calc_counts_the_steps_a_run_with_a_split_trains(cli, ws, tiny_models, tmp_path):
    """Epoch-based, so the held-out images change the count: 6 images in batches of 3 are 2
    steps, where all 8 would be 3."""
    common = dict(train={"max_steps": 0, "epochs": 1, "batch_size": 3}, sample={"steps": 2})
    plain = config(tiny_models, **common).write(tmp_path / "plain.toml")
    split = config(tiny_models, **common, validation={"split": 0.25, "every_n_steps": 100}
                   ).write(tmp_path / "split.toml")
    assert json.loads(cli("calc", "--config", plain, "--json")[1])["total_steps"] == 3
    plan = json.loads(cli("calc", "--config", split, "--json")[1])
    assert (plan["images"], plan["held_out"], plan["total_steps"]) == (6, 2, 2)
    out = json.loads(cli("train", split, "--json")[1])
    job = JobRecord(ws.jobs / out["job"])
    totals = {e["total"] for e in job.events() if e["type"] == "progress"}
    assert totals == {plan["total_steps"]} == {job.status()["steps"]}


@pytest.mark.parametrize("validation, held", [({"split": 0.25}, 2), ({"images": ["red_circle.jpg"]}, 1)])
def test_calc_leaves_the_held_out_images_of_a_folder_and_a_dataset_aside(cli, tiny_models, tmp_path,
                                                                         validation, held):
    """One step an image (batch 1, one bucket at 64 px): the total is the images the trainer's
    own hold_out leaves to train on, whether the source is a folder or a dataset."""
    images = gather_images(str(tiny_models["samples"]))
    trained = hold_out(images, validation.get("split", 0.0), validation.get("images", ()))[0]
    assert len(trained) == len(images) - held
    cli("dataset", "ingest", tiny_models["samples"], "--name", "shapes")
    for source in (str(tiny_models["samples"]), "shapes"):
        path = config(tiny_models, dataset={"source": source}, train={"max_steps": 0, "epochs": 1},
                      validation=validation).write(tmp_path / "run.toml")
        plan = json.loads(cli("calc", "--config", path, "--json")[1])
        assert (plan["total_steps"], plan["held_out"]) == (len(trained), held), source
    # a second dataset holds out nothing from the training images
    other = config(tiny_models, train={"max_steps": 0, "epochs": 1},
                   validation={"source": "shapes"}).write(tmp_path / "other.toml")
    assert json.loads(cli("calc", "--config", other, "--json")[1])["total_steps"] == len(images)
