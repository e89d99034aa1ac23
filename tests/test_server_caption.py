"""POST caption (one image through the resident caption worker) and a caption job, through HTTP,
with the tiny Qwen2.5-VL GGUF pair."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from server_api import API, api, server_config, shapes, workspace_models  # noqa: F401 (fixture)

from lora_lab.jobdir.record import pid_alive
from lora_lab.tiny import gguf_models


@pytest.fixture(scope="module")
def caption_pair(tmp_path_factory):
    return gguf_models.write_caption_pair(tmp_path_factory.mktemp("gguf"), 0)


@pytest.fixture
def jp_server_config(ws, caption_pair, request):
    model, mmproj = caption_pair
    return server_config(ws, **{"caption_model": str(model), "caption_mmproj": str(mmproj),
                                **getattr(request, "param", {})})


async def test_caption_one_image_with_the_resident_model_then_undo(api, shapes, ws, jp_serverapp,
                                                                  tiny_models):
    code, health = await api("health")
    assert health["caption_model_found"] is True and health["caption_worker_running"] is False
    code, result = await api("caption", method="POST", body={
        "dataset": shapes, "file": "yellow_triangle.webp", "preset": "short", "trigger": "sks"})
    assert code == 200, result
    assert result["captioned"] is True and result["caption"].startswith("sks")
    # the random-weight model never stops by itself: asked again at double the limit, still cut
    assert result["retried"] is True and result["truncated"] is True
    txt = ws.datasets / shapes / "yellow_triangle.txt"
    assert txt.read_text() == result["caption"]
    code, read = await api("datasets", shapes, "captions", "yellow_triangle.webp")
    assert read["etag"] == result["etag"]
    code, health = await api("health")
    assert health["caption_worker_running"] is True  # stays loaded for the next image
    # it went through the dataset's journal: one undo takes it back
    code, undone = await api("datasets", shapes, "captions", method="POST", body={"undo": True})
    assert code == 200 and undone["restored"] == 1 and not txt.exists()
    code, err = await api("caption", method="POST", body={"dataset": shapes, "file": "nope.jpg"})
    assert code == 404 and "nope.jpg" in err["detail"]
    # a training job needs the (GPU) memory: submitting one lets the resident model go
    lab = jp_serverapp.extension_manager.extension_points["lora_lab"].app
    services = jp_serverapp.web_app.settings["lora_lab_services"]
    assert services is lab.services
    pid = services.caption_worker().pid
    config = {"model": {"base": workspace_models(ws, tiny_models)["sd15"]},
              "dataset": {"source": shapes, "resolution": 64, "trigger": "sks"},
              "train": {"max_steps": 1}}
    code, accepted = await api("jobs", method="POST",
                               body={"kind": "train", "params": {"config": config}})
    assert code == 202 and not pid_alive(pid)
    assert (await api("health"))[1]["caption_worker_running"] is False
    assert (await api("jobs", accepted["id"], "cancel", method="POST", body={}))[0] in (200, 409)
    # stopping the extension stops the worker process
    services.caption_worker().start()
    pid = services.caption_worker().pid
    await lab.stop_extension()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("jp_server_config", [{"caption_model": "", "caption_mmproj": ""}],
                         indirect=True)
async def test_a_missing_caption_model_is_503_with_what_to_set(api, shapes, monkeypatch):
    monkeypatch.delenv("LORA_LAB_CAPTION_MODEL", raising=False)
    code, err = await api("caption", method="POST", body={"dataset": shapes, "file": "red_circle.jpg"})
    assert code == 503 and "not found" in err["detail"]
    assert "LORA_LAB_CAPTION_MODEL" in err["detail"]


async def test_a_caption_job_through_rest(api, jp_ws_fetch, shapes, caption_pair, ws):
    for path in caption_pair:  # a request names model files inside the workspace
        shutil.copy(path, ws.models / path.name)
    model, mmproj = (f"models/{p.name}" for p in caption_pair)
    code, accepted = await api("jobs", method="POST", body={"kind": "caption", "params": {
        "dataset": shapes, "model": model, "mmproj": mmproj, "max_tokens": 16,
        "files": ["white_circle.webp"]}})
    assert code == 202, accepted
    stream = await jp_ws_fetch(*API, "jobs", accepted["id"], "stream")
    messages = []
    while (raw := await stream.read_message()) is not None:
        messages.append(json.loads(raw))
    assert messages[-1]["type"] == "end" and messages[-1]["state"] == "succeeded", messages[-6:]
    done = next(m for m in messages if m["type"] == "done")
    assert done["captioned"] == 1 and (ws.datasets / shapes / "white_circle.txt").exists()
