"""The list of jobs as `lora-lab jobs list` and the JobsPanel show it: one summary per job from the
core (dataset, LoRA name, start, duration, why it failed), a header row, and filters by state and
kind. The jobs are written as job processes write them, without the processes."""
from __future__ import annotations

import json
import time

import pytest

from lora_lab.jobdir import JobRecord
from lora_lab.jobs import job_summaries, job_summary
from lora_lab.jobs.summary import format_duration
from lora_lab.widgets.jobs_panel import JobsPanel

T0 = time.time() - 3600
ERROR = "the loss became nan at step 3, so training stopped before that update\nTraceback: more"


def train_job(ws, state: str, *, name: str = "", error: str | None = None, ran_s: float = 65.0,
              **status) -> JobRecord:
    config = {"dataset": {"source": "/data/cats"}, "save": {"name": name}}
    job = JobRecord.create("train", {"config": config, "gpus": 1}, ws)
    job.set_status(state, **{"started_at": T0, "heartbeat": T0 + ran_s, "error": error, **status})
    return job


@pytest.fixture
def jobs(ws) -> dict[str, JobRecord]:
    failed = train_job(ws, "failed", name="cat", error=ERROR)
    caption = JobRecord.create("caption", {"dataset": "shapes"}, ws)
    caption.set_status("succeeded", started_at=T0, heartbeat=T0 + 5, progress=1.0)
    unnamed = train_job(ws, "running", progress=0.25, phase="training",
                        heartbeat=time.time())  # its pid is this test's: alive
    return {"failed": failed, "caption": caption, "running": unnamed}


def test_the_core_summarizes_each_job_once(jobs):
    failed = job_summary(jobs["failed"])
    assert failed["dataset"] == "cats" and failed["lora_name"] == "cat"
    assert failed["started_at"] == T0 and failed["duration_s"] == 65.0
    assert failed["reason"] == ERROR.splitlines()[0]  # one line: the rest is in `jobs show`
    running = job_summary(jobs["running"])
    assert running["lora_name"] == f"cats-{jobs['running'].id[:15].replace('-', '_')}"  # the name it will get
    assert running["duration_s"] >= 3600 and running["reason"] is None  # runs on: until now
    caption = job_summary(jobs["caption"])
    assert caption["dataset"] == "shapes" and caption["lora_name"] is None
    assert caption["duration_s"] == 5.0 and caption["loras"] == []
    assert format_duration(65) == "1m05s" and format_duration(7385) == "2h03m"


def test_a_lora_name_comes_from_its_files_once_written(ws, tmp_path):
    lora = tmp_path / "cat-2.safetensors"  # NAME was another run's: it got cat-2
    lora.write_bytes(b"x")
    job = train_job(ws, "succeeded", name="cat", output=str(lora),
                    loras=[{"path": str(tmp_path / "cat-2-000002.safetensors"), "step": 2},
                           {"path": str(lora), "step": None}])
    summary = job_summary(job)
    assert summary["lora_name"] == "cat-2"
    assert [(f["step"], f["bytes"]) for f in summary["loras"]] == [(2, None), (None, 1)]


def test_jobs_list_has_a_header_the_columns_and_filters(cli, ws, jobs):
    lines = cli("jobs", "list")[1].splitlines()
    assert lines[0].split() == ["ID", "KIND", "STATE", "WHERE", "PHASE", "PROGRESS", "DATASET",
                                "LORA", "STARTED", "DURATION", "SIZE", "REASON"]
    assert len(lines) == 5 and lines[-1].startswith("total ") and lines[-1].endswith("in 3 jobs")
    rows = {line.split()[0]: line for line in lines[1:-1]}
    failed = rows[jobs["failed"].id]
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(T0))
    assert " cats " in failed and " cat " in failed and started in failed and "1m05s" in failed
    assert failed.endswith("the loss became nan at step 3, so training stopped before that update")
    assert rows[jobs["caption"].id].split()[1:6] == ["caption", "succeeded", "local", "100%", "shapes"]
    assert lines[0].index("PHASE") == rows[jobs["running"].id].index("training")
    assert " 25% " in rows[jobs["running"].id]
    # the columns line up under the header
    assert lines[1].index(started) == lines[0].index("STARTED") == lines[2].index(started)

    only = cli("jobs", "list", "--state", "failed", "--kind", "train")[1].splitlines()
    assert len(only) == 3 and only[1].startswith(jobs["failed"].id)
    listed = json.loads(cli("jobs", "list", "--kind", "caption", "--json")[1])
    assert [j["id"] for j in listed] == [jobs["caption"].id] and listed[0]["dataset"] == "shapes"
    assert listed[0]["bytes"] > 0 and listed[0]["duration_s"] == 5.0
    assert cli("jobs", "list", "--state", "cancelled", "--kind", "train")[1].strip() == \
        "no cancelled train jobs"
    with pytest.raises(SystemExit):  # a usage mistake: argparse names the choices
        cli("jobs", "list", "--state", "finished")
    assert "invalid choice: 'finished'" in cli.capsys.readouterr().err
    assert [s["id"] for s in job_summaries(ws, state="running", kind="train")] == [jobs["running"].id]


def test_jobs_panel_has_a_header_the_columns_and_filters(ws, jobs):
    panel = JobsPanel(ws, autostart=False)
    header = panel.header.value
    assert all(name in header for name in ("ID", "DATASET", "LORA", "STARTED", "DURATION", "REASON"))
    labels = {job_id: label for label, job_id in panel.jobs.options}
    failed = labels[jobs["failed"].id]
    assert "  " not in failed  # padded with no-break spaces: a <select> collapses plain ones
    assert "\u00a0cats\u00a0" in failed and "\u00a0cat\u00a0" in failed and "1m05s" in failed
    assert failed.endswith("\u00a0" + ERROR.splitlines()[0])

    panel.state_filter.value = "failed"
    assert [r["id"] for r in panel.rows] == [jobs["failed"].id]
    panel.state_filter.value = ""
    panel.kind_filter.value = "caption"
    assert [job_id for _, job_id in panel.jobs.options] == [jobs["caption"].id]
    panel.state_filter.value = "running"
    assert panel.rows == [] and panel.jobs.options == ()
    panel.kind_filter.value = "train"
    assert [r["id"] for r in panel.rows] == [jobs["running"].id]
    # Cancel for a job that runs, Resume for one that stopped early
    panel.jobs.value = jobs["running"].id
    assert not panel.cancel_button.disabled and panel.resume_button.disabled
    panel.state_filter.value = ""
    panel.jobs.value = jobs["failed"].id
    assert panel.cancel_button.disabled and not panel.resume_button.disabled
    panel.close()
