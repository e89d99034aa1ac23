"""POST suggest through HTTP: the config assistant with the tiny GGUF as the server's caption model,
run in a child process (llama.cpp never loads into the server), and its refusals."""
from __future__ import annotations

import json
import sys
import tomllib

import pytest
from server_api import API, api, server_config, shapes  # noqa: F401 (fixtures)

from lora_lab.assistant.schema import FIELDS
from lora_lab.training.config import TrainConfig


@pytest.fixture
def jp_server_config(ws, tiny_caption, request):
    model = getattr(request, "param", None) or tiny_caption["caption_model"]
    return server_config(ws, caption_model=str(model))


async def post(jp_fetch, body) -> tuple[int, dict]:
    r = await jp_fetch(*API, "suggest", method="POST", body=json.dumps(body), raise_error=False,
                       request_timeout=300)
    return r.code, json.loads(r.body)


async def test_suggest_answers_with_a_valid_config_its_reasons_and_toml(jp_fetch, shapes):
    loaded = "llama_cpp" in sys.modules
    code, result = await post(jp_fetch, {"text": "my shapes, SDXL, lr 50", "dataset": shapes, "seed": 3})
    assert code == 200, result
    config = TrainConfig.from_dict(result["config"])
    assert config.model.family == "sdxl" and result["preset"].startswith("sdxl")
    assert config.dataset.source == shapes and config.dataset.trigger  # 3 images have no caption
    assert TrainConfig.from_dict(tomllib.loads(result["toml"])) == config
    assert set(result["answer"]) == set(FIELDS)
    assert {r["source"] for r in result["reasons"].values()} <= {"model", "rule", "preset"}
    assert result["total_steps"] >= 100 and result["facts"]["images"] == 8
    assert ("llama_cpp" in sys.modules) == loaded  # the model ran in a child process


async def test_bad_requests_are_refused_with_their_status(jp_fetch, shapes):
    for body, status, phrase in [
            ({"text": "x", "dataset": "nope"}, 404, "dataset 'nope' not found"),
            ({"text": "x", "dataset": "../etc"}, 400, "invalid dataset name"),
            ({"text": 5, "dataset": shapes}, 400, "text must be a string"),
            ({"dataset": shapes}, 400, "needs 'text'"),
            ({"text": "x" * 2001, "dataset": shapes}, 400, "at most 2000"),
            ({"text": "x", "dataset": shapes, "seed": -1}, 400, "seed must be"),
            ({"text": "x", "dataset": shapes, "model": "/etc/passwd"}, 400, "unknown field(s) model")]:
        code, err = await post(jp_fetch, body)
        assert (code, phrase in err["detail"]) == (status, True), (body, err)


@pytest.mark.parametrize("jp_server_config", ["/nowhere/model.gguf"], indirect=True)
async def test_a_missing_model_is_a_503_naming_the_fix(jp_fetch, shapes):
    code, err = await post(jp_fetch, {"text": "x", "dataset": shapes})
    assert code == 503 and "no GGUF chat model at /nowhere/model.gguf" in err["detail"]
    assert "`lora-lab models pull caption`" in err["detail"]
