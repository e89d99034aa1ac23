"""The notebook kit: both pipeline notebooks run by papermill on the tiny models (their records
checked), their bad parameters, a train job run through the pipeline notebook by the job runner,
`lora-lab notebooks`, and the interactive notebooks run top to bottom."""
from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from test_jobs import ended, wait_until

from lora_lab import Workspace
from lora_lab.datasets import Dataset, ingest
from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord, list_jobs, open_job
from lora_lab.jobdir.record import pid_alive
from lora_lab.notebook_kit import MANIFEST, kit_dir
from lora_lab.widgets.pipelines import CaptionPipeline, TrainPipeline, dataset_markdown, folder_markdown

KIT = kit_dir()
TRAIN_NB, CAPTION_NB = KIT / "pipelines" / "train.ipynb", KIT / "pipelines" / "caption.ipynb"
# debugging.ipynb trains (Run All makes two jobs): tests/test_train_lab.py runs it
INTERACTIVE = sorted(p for p in (KIT / "interactive").glob("*.ipynb") if p.stem != "debugging")


def execute(notebook: Path, out: Path, **parameters) -> nbformat.NotebookNode:
    """Run ``notebook`` through papermill's Python API (a fresh kernel); the executed copy."""
    papermill.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(out.parent),
                               progress_bar=False, kernel_name="python3")
    return nbformat.read(out, as_version=4)


def outputs(nb: nbformat.NotebookNode, mime: str) -> list[str]:
    """Every output of ``mime`` (``stream`` for printed text) in order."""
    found = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if mime == "stream" and o.output_type == "stream":
                found.append(o.text)
            elif mime in o.get("data", {}):
                found.append(o.data[mime])
    return found


def job_in(nb: nbformat.NotebookNode, ws: Workspace) -> JobRecord:
    """The job an executed pipeline notebook names in its record."""
    first = outputs(nb, "text/markdown")[0]
    return open_job(re.search(r"job `([^`]+)`", first)[1], ws)


def write_config(path: Path, tiny_models, source: str, **sections) -> Path:
    from test_train import config

    return config(tiny_models, **sections).apply_overrides([f"dataset.source={source}"]).write(path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_models) -> Workspace:
    """A workspace with the sample images as dataset "shapes", shared by the pipeline runs."""
    ws = Workspace(tmp_path_factory.mktemp("notebooks") / "ws")
    ingest(tiny_models["samples"], "shapes", workspace=ws)
    return ws


@pytest.fixture(scope="module")
def captioned(lab, tiny_caption, tmp_path_factory) -> nbformat.NotebookNode:
    out = tmp_path_factory.mktemp("caption-run") / "caption.ipynb"
    return execute(CAPTION_NB, out, dataset="shapes", workspace=str(lab.root), trigger="sks",
                   model=str(tiny_caption["caption_model"]),
                   mmproj=str(tiny_caption["caption_mmproj"]), max_tokens=8)


@pytest.fixture(scope="module")
def trained(lab, tiny_models, captioned, tmp_path_factory) -> nbformat.NotebookNode:
    run = tmp_path_factory.mktemp("train-run")
    path = write_config(run / "shapes.toml", tiny_models, "shapes", train={"max_steps": 4},
                        sample={"every_n_steps": 2, "prompts": ["sks, a red circle"], "steps": 2},
                        validation={"split": 0.25, "every_n_steps": 2})
    return execute(TRAIN_NB, run / "train.ipynb", config=str(path), workspace=str(lab.root),
                   overrides=["save.name=pipeline-lora", "network.rank=4"])


def test_caption_pipeline_captions_and_records_it(lab, captioned):
    job = job_in(captioned, lab)
    assert job.view()["state"] == "succeeded"
    done = job.events()[-1]
    assert done["type"] == "done" and done["captioned"] == 3 and done["already_done"] == 5
    markdown = "\n".join(outputs(captioned, "text/markdown"))
    assert f"Caption job `{job.id}`" in markdown and 'trigger = "sks"' in markdown  # params, as TOML
    assert "Captioned **3** of 8 images" in markdown and str(lab.datasets / "shapes") in markdown
    # max_tokens=8 cuts every answer of the tiny model, also at 16: the record says which
    assert "3 answer(s) hit the token limit" in markdown and "**3 caption(s) still hit it**" in markdown
    assert all(f"- truncated `{f}`" in markdown for f in done["truncated"])
    assert "Dataset **shapes**" in markdown and "| captioned | 8 |" in markdown  # stats after it
    table = outputs(captioned, "text/html")[-1]
    assert table.count('<img src="data:image/jpeg;base64,') == 8 and table.count("sks") >= 3


def test_train_pipeline_trains_and_records_it(lab, trained):
    lora = lab.loras / "pipeline-lora.safetensors"
    assert lora.is_file()
    job = job_in(trained, lab)
    assert job.view()["state"] == "succeeded" and job.spec()["params"]["config"]["network"]["rank"] == 4
    markdown = "\n".join(outputs(trained, "text/markdown"))
    assert "```toml\n[model]" in markdown and 'name = "pipeline-lora"' in markdown  # the config
    assert "Dataset **shapes**" in markdown and "| images | 8 |" in markdown  # its stats
    assert f"| LoRA | `{lora}`" in markdown and f"| job | `{job.path}` |" in markdown  # output
    loss, lr = outputs(trained, "image/svg+xml")
    assert "<polyline" in loss and ">loss<" in loss and ">learning rate<" in lr
    assert "<title>validation loss</title>" in loss  # the held-out images' curve beside it
    status = job.status()
    best = f"{status['best_val_loss']:.4f} at step {status['best_step']}"
    assert f"| best validation loss | {best} |" in markdown and "| step 2 | " in markdown
    assert f"Best validation loss **{status['best_val_loss']:.4f}**" in markdown
    samples = [e for e in job.events() if e["type"] == "sample"]
    assert len(outputs(trained, "image/png")) == len(samples) == 2
    assert "**step 2**: sks, a red circle" in markdown
    assert f"train job {job.id}" in "".join(outputs(trained, "stream"))
    assert "torchvision" not in "".join(outputs(trained, "stream"))  # no library noise


def test_parameter_defaults_are_those_of_a_caption_job():
    from lora_lab.captioning.job import PARAMS

    declared = papermill.inspect_notebook(str(CAPTION_NB))
    assert set(declared) == {*PARAMS, "workspace", "resume", "job_dir"}
    for name, (default, _) in PARAMS.items():
        assert ast.literal_eval(declared[name]["default"]) == default, name
    assert set(papermill.inspect_notebook(str(TRAIN_NB))) == {
        "config", "overrides", "workspace", "resume", "job_dir"}


@pytest.mark.parametrize("notebook, parameters, message", [
    (TRAIN_NB, {}, "parameter config is missing: name a training config"),
    (TRAIN_NB, {"config": 5}, "parameter config: 5 is not a path to a TOML config file"),
    (TRAIN_NB, {"config": "missing.toml"}, "missing.toml: no such file"),
    (TRAIN_NB, {"config": "CONFIG", "overrides": 3}, "parameter overrides: 3 is not a list"),
    (TRAIN_NB, {"config": "CONFIG", "resume": "yes"}, "parameter resume: 'yes' is not True or False"),
    (TRAIN_NB, {"config": "NO_DATASET"}, "dataset.source: 'nope' is neither a dataset"),
    (CAPTION_NB, {"dataset": "nope"}, "dataset 'nope' does not exist"),
    (CAPTION_NB, {"dataset": "shapes", "max_tokens": "8"},
     "caption parameter max_tokens: '8' is not a whole number"),
], ids=["no-config", "config-type", "config-missing", "overrides-type", "resume-type",
        "no-dataset", "caption-no-dataset", "caption-type"])
def test_bad_parameters_stop_the_check_cell(lab, tiny_models, tmp_path, notebook, parameters,
                                            message):
    configs = {"CONFIG": write_config(tmp_path / "ok.toml", tiny_models, "shapes"),
               "NO_DATASET": write_config(tmp_path / "bad.toml", tiny_models, "nope")}
    parameters = {k: str(configs[v]) if v in configs else v for k, v in parameters.items()}
    jobs_before = len(list_jobs(lab))
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        execute(notebook, tmp_path / "out.ipynb", workspace=str(lab.root), **parameters)
    assert raised.value.ename in ("LoraLabError", "ConfigError", "NotFound")
    assert message in raised.value.evalue
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    failed = [c for c in executed.cells if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "pipeline = " in failed[0].source  # the first cell after the parameters
    assert message in failed[0].outputs[-1].evalue
    assert len(list_jobs(lab)) == jobs_before  # nothing recorded, nothing started


def test_papermill_command_exits_non_zero_and_says_why(lab, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "papermill", str(TRAIN_NB), str(tmp_path / "out.ipynb"),
                           "-p", "config", "nowhere.toml", "-p", "workspace", str(lab.root)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert "ConfigError: nowhere.toml: no such file" in proc.stderr


def test_checks_in_process(lab, tiny_models, tmp_path):
    """The same checks called directly, with the cases the notebooks' defaults cannot reach."""
    path = write_config(tmp_path / "ok.toml", tiny_models, "shapes")
    caption_job = JobRecord.create("caption", {"dataset": "shapes"}, lab)
    cases = [
        (lambda: TrainPipeline.check(resume=True, config=path, workspace=lab.root),
         "parameter resume continues the job in job_dir"),
        (lambda: TrainPipeline.check(config=path, job_dir=caption_job.path),
         "parameter job_dir runs that job with its own config"),
        (lambda: TrainPipeline.check(job_dir=caption_job.path),
         f"parameter job_dir: {caption_job.id} is a caption job; this notebook runs train jobs"),
        (lambda: TrainPipeline.check(job_dir=tmp_path), "is not a job folder (no spec.json)"),
        (lambda: TrainPipeline.check(config=path, overrides=["lr=1"], workspace=lab.root),
         "lr"),
        (lambda: CaptionPipeline.check(lab.root, job_dir=caption_job.path, dataset="shapes"),
         "leave dataset unset"),
        (lambda: CaptionPipeline.check(lab.root, resume=1, dataset="shapes"),
         "parameter resume: 1 is not True or False"),
    ]
    for call, message in cases:
        with pytest.raises(LoraLabError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()
    pipeline = TrainPipeline.check(config=path, overrides="save.name=one", workspace=lab.root)
    assert pipeline.params["config"]["save"]["name"] == "one" and pipeline.job.view()["state"] == "queued"
    assert CaptionPipeline.check(job_dir=caption_job.path, resume=True).job.id == caption_job.id


def test_dataset_records(lab, tiny_models):
    assert "| images | 8 |" in dataset_markdown("shapes", lab)
    config = {"dataset": {"repeats": 3, "caption_extension": ".txt"}}
    folder = folder_markdown(str(tiny_models["samples"]), config, lab)
    assert "| images | 8 |" in folder and "| with repeats | 24 |" in folder


def test_a_train_job_runs_through_the_pipeline_notebook(cli, ws, tiny_models, tmp_path):
    path = write_config(tmp_path / "run.toml", tiny_models, str(tiny_models["samples"]),
                        train={"max_steps": 2})
    out = json.loads(cli("jobs", "submit", "train", path, "--set", "save.name=via-job",
                         "--notebook", TRAIN_NB, "--json")[1])
    job = open_job(out["id"], ws)
    assert wait_until(job, ended)["state"] == "succeeded", job.log_path.read_text()
    wait_until(job, lambda v: not pid_alive(v["pgid"]))  # papermill saves the notebook last
    executed = nbformat.read(job.path / "run.ipynb", as_version=4)
    markdown = "\n".join(outputs(executed, "text/markdown"))
    assert f"Train job `{job.id}`" in markdown and f"Folder **{tiny_models['samples']}**" in markdown
    assert f"| LoRA | `{ws.loras / 'via-job.safetensors'}`" in markdown
    assert len(list_jobs(ws)) == 1  # the notebook ran the submitted job, it made no other
    assert "torchvision" not in job.log_path.read_text()  # the log is the job's, no library noise


def test_notebooks_command_copies_keeps_edits_and_forces(cli, ws, tmp_path):
    kit = sorted(p.relative_to(KIT).as_posix() for p in KIT.glob("*/*.ipynb"))
    assert {"pipelines/train.ipynb", "pipelines/caption.ipynb",
            "interactive/quickstart.ipynb"} <= set(kit)
    first = json.loads(cli("notebooks", "--json")[1])  # default: the workspace's notebooks/
    assert first["dest"] == str(ws.root / "notebooks") and first["copied"] == kit
    dest = tmp_path / "kit"
    cli("notebooks", dest)
    edited = dest / "pipelines" / "train.ipynb"
    edited.write_text(edited.read_text() + " ")
    stale = dest / "pipelines" / "caption.ipynb"  # an untouched copy of an older kit version
    stale.write_text("{}")
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["pipelines/caption.ipynb"] = hashlib.sha256(b"{}").hexdigest()
    (dest / MANIFEST).write_text(json.dumps(manifest))
    (dest / "interactive" / "quickstart.ipynb").unlink()
    rc, text, _ = cli("notebooks", dest)
    assert "kept, you edited them (--force overwrites): pipelines/train.ipynb" in text
    assert "updated to this version: pipelines/caption.ipynb" in text
    assert "copied: interactive/quickstart.ipynb" in text
    assert edited.read_text().endswith(" ") and stale.read_bytes() == CAPTION_NB.read_bytes()
    again = json.loads(cli("notebooks", dest, "--json")[1])
    assert again["kept"] == ["pipelines/train.ipynb"]  # still the user's, copy after copy
    forced = json.loads(cli("notebooks", dest, "--force", "--json")[1])
    assert forced["overwritten"] == ["pipelines/train.ipynb"]
    assert edited.read_bytes() == TRAIN_NB.read_bytes()
    (tmp_path / "file").write_text("")
    assert "is a file" in cli.fails("notebooks", tmp_path / "file")


@pytest.fixture
def tiny_layout(tiny_models, tiny_caption, tmp_path) -> Path:
    """The layout `lora-lab tiny` writes, without fabricating again."""
    models = tmp_path / "models"
    models.mkdir()
    for key, name in (("sd15", "sd15"), ("samples", "samples")):
        (models / name).symlink_to(tiny_models[key])
    (models / "caption").symlink_to(tiny_caption["caption_model"].parent)
    return models


def errors_in(nb: nbformat.NotebookNode) -> list:
    return [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]


def with_cells(notebook: Path, out: Path, *sources: str) -> Path:
    """A copy of ``notebook`` with ``sources`` as code cells after its own: what a user does
    after Run All."""
    nb = nbformat.read(notebook, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, out)
    return out


@pytest.mark.parametrize("notebook", INTERACTIVE, ids=[p.stem for p in INTERACTIVE])
def test_interactive_notebook_runs_top_to_bottom(notebook, tiny_layout, tmp_path):
    executed = execute(notebook, tmp_path / notebook.name, workspace=str(tmp_path / "ws"),
                       models=str(tiny_layout))
    assert not errors_in(executed)
    widgets = outputs(executed, "application/vnd.jupyter.widget-view+json")
    assert widgets  # the panels were displayed
    assert (tmp_path / "ws" / "loras").is_dir()
    assert list_jobs(Workspace(tmp_path / "ws")) == []  # Run All starts no job: the buttons do


CLICKS = """
import time

editor.ai_selection_button.click()  # what the user does after Run All: caption, then train
while not editor.job.finished:
    time.sleep(0.2)
launcher.train_button.click()
while not launcher.job.finished:
    time.sleep(0.5)
print("caption", editor.job.view()["state"], "train", launcher.job.view()["state"])
"""


def test_quickstart_demo_trains_when_the_buttons_are_clicked(tiny_layout, tmp_path):
    ws = Workspace(tmp_path / "ws")
    out = with_cells(KIT / "interactive" / "quickstart.ipynb", tmp_path / "quickstart.ipynb",
                     "from lora_lab.jobdir import list_jobs\nprint('jobs after Run All:', len(list_jobs(ws)))",
                     CLICKS)
    executed = execute(out, tmp_path / "run.ipynb", workspace=str(ws.root), models=str(tiny_layout))
    assert not errors_in(executed)
    printed = "".join(outputs(executed, "stream"))
    assert "jobs after Run All: 0" in printed and "caption succeeded train succeeded" in printed
    caption_job, train_job = sorted(list_jobs(ws), key=lambda j: j.view()["created"])
    assert caption_job.spec()["params"]["max_tokens"] == 300  # the normal limit, not a demo's
    assert train_job.spec()["params"]["config"]["dataset"]["trigger"] == "lolab"
    assert list(ws.loras.glob("*.safetensors"))
    ds = Dataset.open("quickstart", ws)
    assert all(r["caption"] for r in ds.index.all())  # the uncaptioned three were captioned


def test_quickstart_on_your_own_images_changes_nothing_until_you_click(tiny_models, tmp_path):
    """Real data: no tiny model made or used, no caption touched, the normal limits, no job."""
    photos = tmp_path / "holiday"
    shutil.copytree(tiny_models["samples"], photos)
    captions = {p.name: p.read_text() for p in photos.glob("*.txt")}
    ws = Workspace(tmp_path / "ws")
    look = ("print('state:', launcher.fields['dataset.resolution'].value, repr(editor.trigger_text.value), "
            "editor.max_tokens, editor.model.parent == ws.models / 'caption', browser.selected)")
    out = with_cells(KIT / "interactive" / "quickstart.ipynb", tmp_path / "quickstart.ipynb", look)
    executed = execute(out, tmp_path / "run.ipynb", workspace=str(ws.root), images=str(photos))
    assert not errors_in(executed)
    printed = "".join(outputs(executed, "stream"))
    uncaptioned = sorted(p.name for p in photos.iterdir()
                         if p.suffix != ".txt" and not p.with_suffix(".txt").exists())
    assert f"state: 512 '' 300 True {uncaptioned}" in printed  # ticked, not captioned
    # the doctor's table: a row for each check, the disk's naming this workspace (and, on a
    # nearly full disk such as a CI runner's, saying so after it)
    workspace = re.escape(str(ws.root))
    assert re.search(rf"^(ok|warn|fail) +disk +\d+ GB free of \d+ GB on .* \(the workspace {workspace}\)"
                     r"(: under \d+ GB, .*)?$",
                     printed, re.M)
    assert re.search(r"^(ok|warn) +server extension +lora_lab.server_ext ", printed, re.M)
    assert list_jobs(ws) == [] and not (ws.models / "tiny").exists()
    ds = Dataset.open("holiday", ws)
    on_disk = {f"{Path(f).stem}.txt": ds.caption(f) for f in ds.select()}
    assert {k: v for k, v in on_disk.items() if v} == {k: v.strip() for k, v in captions.items()}
