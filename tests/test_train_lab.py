"""TrainLab, a training run held in the kernel: its batches are the job's, its steps the job's
update (Ctrl-C included), its checkpoints resume as a job's; one lab per family; what it refuses."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import config
from test_train_flow import FAMILIES as FLOW
from test_train_flow import LR
from test_train_resume import _same_weights

from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord, list_jobs
from lora_lab.training import TrainLab
from lora_lab.training.job import train
from lora_lab.training.lab import IDLE
from lora_lab.training.trainer import Trainer

STEPS = 6


def _exact_config(tiny_models, **train):
    # every random change the trainer makes: flips, tag shuffle and dropout, caption dropout,
    # LoRA dropout (the global RNG), two micro-batches a step, a warm-up schedule
    return config(tiny_models, train={"max_steps": STEPS, "batch_size": 2, "grad_accum": 2,
                                      "scheduler": "cosine", "warmup_steps": 2, **train},
                  network={"rank": 4, "dropout": 0.1},
                  dataset={"flip": True, "shuffle_tags": True, "tag_dropout": 0.2,
                           "caption_dropout": 0.3},
                  save={"name": "exact"})


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory):
    """An uninterrupted `lora-lab train` of the exact config, and what its loop fed the
    objective at each micro-batch (the trainer's own micro_batch, wrapped)."""
    from lora_lab import Workspace

    ws = Workspace(tmp_path_factory.mktemp("reference") / "ws")
    fed, own = {}, Trainer.micro_batch

    def recording(self, m):
        batch = own(self, m)
        fed[m] = {"images": [img.path for img in batch.images], "flips": batch.flips,
                  "captions": batch.captions, "bucket": batch.bucket, "params": batch.params.clone()}
        return batch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "micro_batch", recording)
        result = train(_exact_config(tiny_models), workspace=ws)
    return {"lora": load_file(result.output), "fed": fed}


def test_batch_n_is_the_micro_batch_the_job_trains_on(ws, tiny_models, reference):
    lab = TrainLab(_exact_config(tiny_models), ws)
    fed = reference["fed"]
    assert lab.micro_batches == len(fed) == STEPS * 2
    for n in range(lab.micro_batches):
        shown = lab.batch(n)
        assert [i.path for i in shown.items] == fed[n]["images"], n
        assert shown.flips == fed[n]["flips"] and shown.captions == fed[n]["captions"], n
        assert shown.bucket == fed[n]["bucket"] and shown.step == n // 2
        assert torch.equal(shown.params, fed[n]["params"]), n
        for item in shown.items:
            assert item.image.size == item.decoded.size == shown.bucket
            assert [t.encoder for t in item.tokens] == ["text_encoder"] and item.tokens[0].limit == 77
    dropped = [c for m in fed.values() for c in m["captions"] if c == ""]
    assert dropped and any(m["flips"] for m in fed.values())  # the draws were really exercised
    html = lab.batch(0)._repr_html_()
    assert html.count("<img") == 2 * len(fed[0]["images"]) and "micro-batch 0" in html
    with pytest.raises(LoraLabError, match=r"^micro-batch 12 is past the end of the run: it has 12 "
                                           r"micro-batches \(0 to 11: 6 steps of 2 micro-batches\)$"):
        lab.batch(12)
    lab.close()


def test_token_counts_mark_a_caption_the_encoder_cuts(ws, tiny_models, tmp_path):
    source = shutil.copytree(tiny_models["samples"], tmp_path / "long")
    first = sorted(source.glob("*.txt"))[0]
    first.write_text(", ".join(["a red circle above green grass"] * 12))
    lab = TrainLab(config(tiny_models, dataset={"source": str(source)}, train={"max_steps": 8}), ws)
    items = [item for n in range(lab.micro_batches) for item in lab.batch(n).items]
    cut = [i for i in items if i.path.stem == first.stem]
    assert cut and all(i.truncated and i.tokens[0].count > 77 for i in cut)
    assert not any(i.truncated for i in items if i.path.stem != first.stem)
    assert "truncated" in str(cut[0].tokens[0])
    lab.close()


def _interrupt_during(lab: TrainLab, step: int, times: int = 1) -> None:
    """Ctrl-C (as the notebook's interrupt button sends it), ``times`` over, to this process from
    another thread once step ``step`` has begun, before its update."""
    update = lab.trainer._update

    def interrupted(index, stop_requested):
        if index + 1 == step:
            def press():
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.05)

            thread = threading.Thread(target=press)
            thread.start()
            thread.join()  # the handler runs here, in the main thread
        return update(index, stop_requested)

    lab.trainer._update = interrupted


def _optimizer_steps(lab: TrainLab) -> int:
    optimizer = lab.trainer.optimizer.optimizer
    return int(next(iter(optimizer.state.values()))["step"])


def test_ctrl_c_mid_step_leaves_a_lab_that_trains_on_to_the_same_lora(ws, tiny_models, reference):
    lab = TrainLab(_exact_config(tiny_models), ws)
    first = lab.batch(5).params.clone()
    _interrupt_during(lab, 3)  # once: the step in progress completes, the call ends
    log = lab.step(STEPS - 1)
    assert log.interrupted == "stopped after step 3: Ctrl-C"
    assert [r["step"] for r in log.rows] == [1, 2, 3] and lab.steps == _optimizer_steps(lab) == 3
    assert lab.trainer.lr_scheduler.last_epoch == 3
    assert all(p.grad is None for p in lab.trainer._trainable())
    _interrupt_during(lab, 5, times=2)  # twice: at once; step 5 had not updated, so it does not count
    log = lab.step(3)
    assert log.interrupted == "interrupted: 4 of 6 steps trained"
    assert [r["step"] for r in log.rows] == [4] and lab.steps == _optimizer_steps(lab) == 4
    assert lab.trainer.lr_scheduler.last_epoch == 4
    assert all(p.grad is None for p in lab.trainer._trainable())
    lab.trainer._update = type(lab.trainer)._update.__get__(lab.trainer)
    # looking inside between steps draws nothing from the training's random streams
    assert torch.equal(lab.batch(5).params, first)
    before = lab.loss_by_timestep(buckets=4, images=2)
    assert lab.loss_by_timestep(buckets=4, images=2).rows == before.rows  # fixed noise
    lab.sample("sks, a red circle", steps=2)
    rest = lab.step(STEPS - 4)
    assert [r["step"] for r in rest.rows] == [5, 6] and not rest.interrupted
    assert rest.rows[0]["lr"] > rest.rows[1]["lr"] == 0 and all(r["grad_norm"] > 0 for r in rest.rows)
    output = lab.save()
    _same_weights(load_file(output), reference["lora"])
    lab.close()
    view = lab.job.view()
    assert view["state"] == "succeeded" and view["output"] == str(output)
    progress = [e["step"] for e in lab.job.events() if e["type"] == "progress"]
    assert progress == list(range(1, STEPS + 1))  # as a background run's events


def test_a_lab_checkpoint_resumes_as_a_job_to_the_same_lora(cli, ws, tiny_models, reference):
    lab = TrainLab(_exact_config(tiny_models), ws)
    assert lab.job.view()["state"] == "running" and lab.job.view()["phase"] == IDLE
    lab.step(2)
    checkpoint = lab.save(checkpoint=True)
    assert checkpoint.name == "step-000002"
    lora = lab.save()  # an intermediate LoRA, listed with the job's
    assert [f["path"] for f in lab.job.view()["loras"]] == [str(lora)]
    assert lab.job.view()["state"] == "running"  # held by this kernel: not a dead job
    assert "still running" in cli.fails("jobs", "resume", lab.job.id)
    lab.close()
    assert lab.job.view()["state"] == "cancelled"
    out = json.loads(cli("train", "--resume", lab.job.id, "--json")[1])
    assert out["steps"] == STEPS
    _same_weights(load_file(out["output"]), reference["lora"])
    with pytest.raises(LoraLabError, match="this TrainLab is closed"):
        lab.step()


def test_a_cancel_from_the_jobs_list_stops_the_lab_not_the_kernel(cli, ws, tiny_models):
    lab = TrainLab(config(tiny_models), ws)
    lab.step()
    cli("jobs", "cancel", lab.job.id)  # the kernel (this process) is not signalled
    assert lab.job.view()["state"] == "cancelled"
    with pytest.raises(LoraLabError, match=f"job {lab.job.id} is cancelled"):
        lab.step()


def test_a_config_the_trainer_refuses_is_refused_alike_and_leaves_no_job(cli, ws, tiny_models, tmp_path):
    path = config(tiny_models, dataset={"source": str(tmp_path / "nowhere")}).write(tmp_path / "bad.toml")
    said = cli.fails("train", path).removeprefix("lora-lab: error: ")
    assert list_jobs(ws) == []
    for given in (path, str(path), config(tiny_models, dataset={"source": str(tmp_path / "nowhere")})):
        with pytest.raises(LoraLabError) as refused:
            TrainLab(given, ws)
        assert str(refused.value) == said
    assert list_jobs(ws) == [] and not (ws.jobs.is_dir() and any(ws.jobs.iterdir()))


def test_steps_beyond_the_run_and_bad_arguments_are_refused(ws, tiny_models):
    lab = TrainLab(config(tiny_models, train={"max_steps": 2}), ws)
    with pytest.raises(LoraLabError, match=r"step\(3\): the run has 2 of its 2 steps left"):
        lab.step(3)
    for bad in (0, -1, 1.5):
        with pytest.raises(LoraLabError, match="k is a number of steps"):
            lab.step(bad)
    for n in (-1, 2, "0"):
        with pytest.raises(LoraLabError, match="has 2 micro-batches"):
            lab.batch(n)
    with pytest.raises(LoraLabError, match="buckets must be 1 to 1000"):
        lab.loss_by_timestep(buckets=0)
    with pytest.raises(LoraLabError, match="one prompt or a list"):
        lab.sample([])
    assert lab.steps == 0 and lab.job.events()[-1]["type"] != "progress"
    lab.close()


@pytest.mark.parametrize("family", ["sd15", "sdxl", *FLOW])
def test_one_lab_per_family(ws, tiny_models, tiny_flow, family):
    models = tiny_flow if family in FLOW else tiny_models
    lab = TrainLab(config(models, family, train={"max_steps": 2, "lr": LR.get(family, 1e-3)}), ws)
    shown = lab.batch(1)
    assert shown.items and all(i.decoded.size == shown.bucket for i in shown.items)
    assert all(i.tokens and all(t.count > 0 and t.limit > 0 for t in i.tokens) for i in shown.items)
    log = lab.step(2)
    assert [r["step"] for r in log.rows] == [1, 2] and all(r["loss"] > 0 for r in log.rows)
    by_t = lab.loss_by_timestep(buckets=3, images=1, draws=1)
    assert [(lo, hi) for lo, hi, _ in by_t.rows] == [(0, 332), (333, 665), (666, 999)]
    assert all(loss > 0 for loss in by_t.losses) and by_t.image.size[0] > 0
    samples = lab.sample(["sks, a red circle"], steps=2)
    assert samples.images[0].size == (64, 64)
    assert [e["type"] for e in lab.job.events()].count("sample") == 1
    output = lab.save()
    assert output.is_file() and lab.job.view()["loras"][-1]["step"] is None  # the final file
    lab.close()
    assert JobRecord(lab.job.path).view()["state"] == "succeeded"


def test_the_debugging_notebook_shows_the_cause_and_trains_the_fix(tiny_models, tmp_path):
    import re

    from test_notebooks import KIT, errors_in, execute, outputs

    from lora_lab import Workspace

    models = tmp_path / "models"
    models.mkdir()
    for key in ("sd15", "samples"):
        (models / key).symlink_to(tiny_models[key])
    executed = execute(KIT / "interactive" / "debugging.ipynb", tmp_path / "run.ipynb",
                       workspace=str(tmp_path / "ws"), models=str(models))
    assert not errors_in(executed)
    printed = "".join(outputs(executed, "stream"))
    shares = {run: (int(a), int(b)) for run, a, b in
              re.findall(r"(bad|fixed) run: (\d+) of (\d+) captions contain 'lolab'", printed)}
    assert shares["bad"][1] == shares["fixed"][1] == 12
    assert shares["bad"][0] <= 3 and shares["fixed"][0] >= 9  # the cause, visible in batch()
    html = "".join(outputs(executed, "text/html"))
    assert html.count("micro-batch 0") == 2 and "timesteps" in html and "samples at step 12" in html
    jobs = list_jobs(Workspace(tmp_path / "ws"))
    assert [j.view()["state"] for j in jobs] == ["succeeded", "succeeded"]
    loras = [j.view()["output"] for j in jobs]
    assert all(Path(p).is_file() for p in loras) and loras[0] != loras[1]
    for line in printed.splitlines():
        if line.startswith(("bad:", "fixed:")):
            assert line.split(": ", 1)[1] in loras
    # the two LoRAs compared in a grid: the base column, then each at 0.5 and 1, a row per prompt
    grid = json.loads((tmp_path / "ws" / "exports" / "debugging-grid.json").read_text())
    assert sorted(lora["path"] for lora in grid["loras"]) == sorted(loras)
    assert (tmp_path / "ws" / "exports" / "debugging-grid.png").is_file()
    assert grid["strengths"] == [0.0, 0.5, 1.0] and len(grid["prompts"]) == 2
    assert outputs(executed, "application/vnd.jupyter.widget-view+json")  # the LoraTryout panel


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_loss_by_timestep_gives_the_denoiser_the_bucket_timesteps(ws, tiny_models, tiny_flow, family):
    lab = TrainLab(config(tiny_flow if family == "flux" else tiny_models, family), ws)
    seen = []
    hook = lab.trainer.models[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["timestep"] if "timestep" in kwargs else args[1]),
        with_kwargs=True)
    lab.loss_by_timestep(buckets=2, images=1, draws=1)
    hook.remove()
    middles = [249, 749]  # of 0-499 and 500-999
    if family == "sd15":  # the UNet takes the index itself
        assert [t.tolist() for t in seen] == [[249], [749]]
    else:  # the transformer takes the shifted table's value at that index, as a fraction
        assert torch.equal(torch.cat(seen), lab.trainer.objective.path.timesteps[middles] / 1000)
    lab.close()
