"""Deleting jobs with `lora-lab jobs rm` (and the core `delete` it shares with REST): ended jobs
only, their folder gone whole, their LoRA kept or removed (never one outside the workspace), and
the disk use `jobs list` shows."""
from __future__ import annotations

import json

import pytest
from conftest import tree_digest
from test_train import config

from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord, list_jobs
from lora_lab.jobs import delete


def ended_job(ws, output=None, state="succeeded") -> JobRecord:
    """A job that ended, with a checkpoint and a log, and ``output`` as the LoRA it wrote."""
    job = JobRecord.create("train", {"config": {}}, ws)
    (job.path / "checkpoints" / "step-000002").mkdir(parents=True)
    (job.path / "checkpoints" / "step-000002" / "adapter.safetensors").write_bytes(b"x" * 5000)
    job.log_path.write_text("step 1\nstep 2\n")
    job.set_status(state, pid=None, **({"output": str(output)} if output else {}))
    return job


def lora_file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"lora" * 100)
    return path


def folder_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_rm_deletes_a_trained_job_and_keeps_its_lora(cli, ws, tiny_models, tmp_path):
    path = config(tiny_models, train={"max_steps": 2}, save={"name": "old", "every_n_steps": 1}
                  ).write(tmp_path / "run.toml")
    job = JobRecord(ws.jobs / json.loads(cli("train", path, "--json")[1])["job"])
    other = ended_job(ws)
    size = folder_size(job.path)
    listed = {v["id"]: v for v in json.loads(cli("jobs", "list", "--json")[1])}
    assert listed[job.id]["bytes"] == size > 0 and listed[other.id]["bytes"] == folder_size(other.path)
    lines = cli("jobs", "list")[1].splitlines()  # a header, the jobs newest first, the total
    assert len(lines) == 4 and lines[-1].startswith("total ") and lines[-1].endswith("in 2 jobs")
    assert lines[0].startswith("ID") and lines[2].startswith(job.id)
    assert lines[2][lines[0].index("SIZE"):].split()[1] == "KB"  # its size column
    assert json.loads(cli("jobs", "show", job.id, "--json")[1])["bytes"] == size

    out = cli("jobs", "rm", job.id)[1]
    lora = ws.loras / "old.safetensors"
    assert out.strip() == f"deleted {job.id} ({size / 1000:.1f} KB); kept its LoRA {lora}"
    assert not job.path.exists() and lora.is_file()
    assert not list(ws.jobs.glob(".deleting-*")) and [j.id for j in list_jobs(ws)] == [other.id]
    assert "no job" in cli.fails("jobs", "show", job.id)


def test_rm_lora_remove_takes_only_a_lora_inside_the_workspace(cli, ws, tmp_path):
    inside = ended_job(ws, lora_file(ws.loras / "mine.safetensors"))
    outside_lora = lora_file(tmp_path / "elsewhere" / "theirs.safetensors")
    outside = ended_job(ws, outside_lora)
    linked_lora = lora_file(tmp_path / "elsewhere" / "linked.safetensors")
    (ws.loras / "linked.safetensors").symlink_to(linked_lora)
    linked = ended_job(ws, ws.loras / "linked.safetensors", state="failed")
    done = json.loads(cli("jobs", "rm", inside.id, outside.id, linked.id, "--lora", "remove",
                          "--json")[1])
    assert [d["id"] for d in done] == [inside.id, outside.id, linked.id]
    assert done[0]["lora_removed"] and not (ws.loras / "mine.safetensors").exists()
    assert done[1]["lora_kept"] == "it is outside the workspace" and outside_lora.is_file()
    assert done[2]["lora_kept"] == "it is outside the workspace" and linked_lora.is_file()
    assert (ws.loras / "linked.safetensors").is_symlink()
    assert list_jobs(ws) == [] and list(ws.jobs.iterdir()) == []  # nothing left aside


def test_a_lora_another_job_wrote_too_is_kept(cli, ws):
    lora = lora_file(ws.loras / "same.safetensors")
    old, new = ended_job(ws, lora), ended_job(ws, lora)
    out = cli("jobs", "rm", old.id, "--lora", "remove")[1]
    assert f"kept its LoRA {lora}: job {new.id} wrote it too" in out and lora.is_file()
    cli("jobs", "rm", new.id, "--lora", "remove")
    assert not lora.exists()


def test_rm_refuses_a_running_job_and_deletes_none(cli, ws):
    lora = lora_file(ws.loras / "kept.safetensors")
    finished = ended_job(ws, lora)
    running = JobRecord.create("train", {"config": {}}, ws)
    running.set_status("running")  # this process: alive, its heartbeat fresh
    before = tree_digest(ws.root)
    line = cli.fails("jobs", "rm", finished.id, running.id, "--lora", "remove")
    assert line == (f"lora-lab: error: job {running.id} is still running; cancel it first "
                    f"(lora-lab jobs cancel {running.id}), then delete it")
    assert tree_digest(ws.root) == before
    queued = JobRecord.create("caption", {}, ws)  # queued by this process: not started yet
    assert "is still queued; cancel it first" in cli.fails("jobs", "rm", queued.id)
    assert queued.path.is_dir()


def test_rm_refuses_unknown_ids_and_bad_choices(cli, ws):
    job = ended_job(ws)
    missing = "20260101-000000000-train-abcdef"
    assert cli.fails("jobs", "rm", job.id, missing) == (
        f"lora-lab: error: no job {missing} in {ws.jobs} (see `lora-lab jobs list`)")
    assert "is not a job id" in cli.fails("jobs", "rm", "../jobs")
    assert job.path.is_dir()  # refused before any was deleted
    with pytest.raises(SystemExit):  # argparse: usage and exit 2
        cli("jobs", "rm", job.id, "--lora", "delete", ok=False)
    with pytest.raises(LoraLabError, match="lora must be keep or remove, not 'delete'"):
        delete([job], ws, lora="delete")
    assert job.path.is_dir()


def test_a_damaged_job_can_be_deleted(cli, ws):
    job = ended_job(ws)
    (job.path / "spec.json").unlink()
    (job.path / "status.json").write_text("{not json")
    assert cli("jobs", "rm", job.id)[1].startswith(f"deleted {job.id} (")
    assert not job.path.exists()
