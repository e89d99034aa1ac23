"""What the JupyterLab extension asks the server for, through a real Jupyter server: where the
file browser finds the workspace, jobs and LoRA files (``browse``), the GPUs, the presets, the
notebook kit, and ingest from the Jupyter root. The workspace lies inside the Jupyter root
unless a test says "outside"."""
from __future__ import annotations

import json
import shutil
import sys

import pytest
from server_api import server_config

from lora_lab import Workspace
from lora_lab.devices import gpu_reading, gpu_status
from lora_lab.jobdir import JobRecord
from lora_lab.training.config import TrainConfig
from lora_lab.training.presets import PRESETS

API = ("lora-lab", "api")
OUTSIDE = pytest.mark.parametrize("lab_ws", ["outside"], indirect=True)


@pytest.fixture
def lab_ws(request, jp_root_dir, tmp_path) -> Workspace:
    inside = getattr(request, "param", "inside") == "inside"
    return Workspace(jp_root_dir / "lora-lab" if inside else tmp_path / "ws")


@pytest.fixture
def jp_server_config(lab_ws):
    return server_config(lab_ws)


@pytest.fixture
def api(jp_fetch):
    async def call(*path, method="GET", body=None, **kwargs):
        data = json.dumps(body) if body is not None else ("" if method == "POST" else None)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        r = await jp_fetch(*API, *path, method=method, body=data, raise_error=False,
                           headers=headers, **kwargs)
        return r.code, json.loads(r.body)
    return call


def finished_train_job(ws: Workspace, output) -> JobRecord:
    job = JobRecord.create("train", {}, ws)
    job.set_status("succeeded", pid=None, output=str(output))
    return job


# -- where things are -----------------------------------------------------------------------------
async def test_health_says_where_the_file_browser_finds_the_workspace(api, jp_root_dir):
    code, health = await api("health")
    assert code == 200
    assert health["contents"] == {"root": str(jp_root_dir.resolve()), "workspace": "lora-lab"}


@OUTSIDE
async def test_a_workspace_outside_the_jupyter_root_has_no_contents_path(api, jp_root_dir):
    code, health = await api("health")
    assert health["contents"] == {"root": str(jp_root_dir.resolve()), "workspace": None}


async def test_job_views_carry_the_file_browser_paths_of_the_folder_and_the_lora(
        api, lab_ws, tmp_path):
    job = finished_train_job(lab_ws, lab_ws.loras / "cat.safetensors")
    elsewhere = finished_train_job(lab_ws, tmp_path / "elsewhere.safetensors")
    expected = {"dir": f"lora-lab/jobs/{job.id}", "output": "lora-lab/loras/cat.safetensors"}
    code, view = await api("jobs", job.id)
    assert code == 200 and view["browse"] == expected
    code, page = await api("jobs")
    assert [j["browse"] for j in page["jobs"]] == [
        {"dir": f"lora-lab/jobs/{elsewhere.id}", "output": None}, expected]  # a LoRA outside the root


@OUTSIDE
async def test_a_workspace_outside_the_root_has_no_browse_paths(api, lab_ws):
    job = finished_train_job(lab_ws, lab_ws.loras / "cat.safetensors")
    code, view = await api("jobs", job.id)
    assert view["browse"] == {"dir": None, "output": None}


# -- GPUs -----------------------------------------------------------------------------------------
def nvml_present() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    return True


@pytest.mark.skipif(nvml_present(), reason="this box has an NVIDIA driver")
async def test_a_box_without_an_nvidia_driver_reads_cpu_only(api, monkeypatch):
    code, gpus = await api("gpus")
    assert code == 200 and gpus == {"gpus": [], "source": "none"}
    assert gpu_status() == gpus
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed at all
    assert gpu_status() == {"gpus": [], "source": "none"}


@pytest.mark.skipif(not nvml_present(), reason="no NVIDIA driver on this box")
def test_each_gpu_nvml_sees_is_read():
    import pynvml

    status = gpu_status()
    assert status["source"] == "nvml" and len(status["gpus"]) == pynvml.nvmlDeviceGetCount()
    for gpu in status["gpus"]:
        assert gpu["name"] and 0 < gpu["memory_total_mb"] and 0 <= gpu["memory_used_mb"]


def test_a_reading_is_in_percent_and_mib_with_the_name_as_text():
    reading = gpu_reading(1, b"NVIDIA H100 80GB HBM3", 37, 1234 * 2**20 + 99, 85520809984)
    assert reading == {"index": 1, "name": "NVIDIA H100 80GB HBM3", "utilization": 37,
                       "memory_used_mb": 1234, "memory_total_mb": 81559}
    assert gpu_reading(0, "A MIG slice", None, 0, 2**30)["utilization"] is None


# -- presets ----------------------------------------------------------------------------------------
async def test_presets_carry_the_whole_config_they_start_from(api):
    code, body = await api("presets")
    assert code == 200 and [p["name"] for p in body["presets"]] == list(PRESETS)
    for preset in body["presets"]:
        config = preset["config"]
        assert set(config) == {"model", "dataset", "network", "train", "save", "sample", "validation",
                               "track"}
        assert config["model"]["family"] == preset["family"] and preset["description"]
        assert config["model"]["base"] == "" and config["dataset"]["source"] == ""
        config["model"]["base"], config["dataset"]["source"] = "models/sd15", "cats"
        assert TrainConfig.from_dict(config).to_dict() == config  # complete, and valid once filled
    sdxl = next(p for p in body["presets"] if p["name"] == "sdxl")["config"]
    assert sdxl["dataset"]["resolution"] == 1024 and sdxl["train"]["gradient_checkpointing"] is True


# -- the notebook kit ---------------------------------------------------------------------------------
async def test_the_kit_goes_into_the_workspace_and_keeps_edited_notebooks(api, lab_ws, jp_root_dir):
    code, kit = await api("kit", method="POST")
    assert code == 200 and kit["path"] == "lora-lab/notebooks"
    assert kit["open"] == "lora-lab/notebooks/interactive/quickstart.ipynb"
    assert (jp_root_dir / kit["open"]).is_file() and "interactive/quickstart.ipynb" in kit["copied"]
    edited = lab_ws.root / "notebooks" / "interactive" / "quickstart.ipynb"
    edited.write_text(edited.read_text().replace("LoRA", "my LoRA", 1))
    code, again = await api("kit", method="POST")
    assert code == 200 and again["kept"] == ["interactive/quickstart.ipynb"] and not again["copied"]
    assert "my LoRA" in edited.read_text()


@OUTSIDE
async def test_the_kit_goes_into_the_jupyter_root_when_the_workspace_lies_outside(api, jp_root_dir):
    code, kit = await api("kit", method="POST")
    assert code == 200 and kit["path"] == "lora-lab-notebooks"
    assert (jp_root_dir / "lora-lab-notebooks" / "interactive" / "quickstart.ipynb").is_file()


async def test_a_file_where_the_kit_goes_is_a_conflict_left_alone(api, lab_ws):
    (lab_ws.root / "notebooks").write_text("my notes")
    code, err = await api("kit", method="POST")
    assert code == 409 and "is a file" in err["detail"] and "move or rename it" in err["detail"]
    assert (lab_ws.root / "notebooks").read_text() == "my notes"


# -- ingest from the Jupyter root -------------------------------------------------------------------
@OUTSIDE
async def test_a_folder_in_the_jupyter_root_can_be_ingested(api, lab_ws, samples, jp_root_dir):
    shutil.copytree(samples, jp_root_dir / "photos" / "shoot")
    code, report = await api("datasets", method="POST", params={"name": "shoot"},
                             body={"source": str(jp_root_dir / "photos" / "shoot")})
    assert code == 201 and len(report["added"]) == 8
    # as the file browser names it: relative to the root (the workspace has no such folder)
    code, report = await api("datasets", method="POST", params={"name": "again"},
                             body={"source": "photos/shoot"})
    assert code == 201 and len(report["added"]) == 8
    assert sorted(p.name for p in lab_ws.datasets.iterdir()) == ["again", "shoot"]


@OUTSIDE
async def test_a_source_outside_the_root_and_the_workspace_is_refused(api, lab_ws, samples):
    code, err = await api("datasets", method="POST", params={"name": "x"},
                          body={"source": str(samples)})
    assert code == 400 and "outside the workspace" in err["detail"] and "Jupyter root" in err["detail"]
    code, err = await api("datasets", method="POST", params={"name": "x"},
                          body={"source": "../samples"})  # climbing out of the root
    assert code == 400
    assert list(lab_ws.datasets.iterdir()) == [] and not (lab_ws.root / ".uploads").exists()


async def test_the_root_holding_the_workspace_cannot_be_ingested(api, lab_ws, jp_root_dir):
    code, err = await api("datasets", method="POST", params={"name": "x"},
                          body={"source": str(jp_root_dir)})
    assert code == 400 and "holding it" in err["detail"]
    assert list(lab_ws.datasets.iterdir()) == []
