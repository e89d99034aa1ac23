"""The assistant's model: any GGUF chat model through llama-cpp-python (by default the caption
model's text side, its GGUF loaded without the mmproj), its answer held to the schema's grammar.

The file is checked before loading (llama.cpp reports every bad file as the same "Failed to
load model"); the model is loaded for one answer and closed, so nothing stays in memory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..captioning.base import CaptionError
from ..captioning.llama import _route_logs, check_gguf, model_paths
from ..workspace import Workspace
from .schema import FIELDS, answer_schema, max_answer_tokens

TEMPLATE_TOKENS = 64  # what a chat template adds around a message, at most (Llama 3's ~30)

SYSTEM = ("You are an expert in training LoRA adapters for image models (kohya sd-scripts, "
          "ai-toolkit). Suggest training settings for the user's request and dataset. Answer "
          "with JSON only: for each key, {\"value\": ..., \"reason\": \"one short line\"}.")


class AssistantModelError(CaptionError):
    """The assistant's model is missing, not a GGUF chat model, or failed to answer."""


def model_path(model: str | os.PathLike | None = None, workspace: Workspace | None = None) -> Path:
    """``model``, else the caption model (``$LORA_LAB_CAPTION_MODEL``, else the pulled one),
    checked to be a GGUF language model."""
    path = model_paths(model, None, workspace)[0]
    if not path.exists():
        raise AssistantModelError(f"no GGUF chat model at {path}: pull one with `lora-lab models "
                                  "pull caption` (its text side answers) or pass --model FILE.gguf")
    try:
        arch = check_gguf(path, "assistant model")
    except CaptionError as e:
        raise AssistantModelError(f"{e} (pass --model with a GGUF chat model)") from None
    if arch == "clip":
        raise AssistantModelError(f"assistant model {path} is a vision projector (mmproj), not a "
                                  "chat model; pass the language model GGUF")
    return path


def prompt(text: str, facts: str) -> list[dict[str, str]]:
    """The chat: each key with the field it sets and what it allows, the dataset and box, the
    request. Kept short: a long prompt slows every answer token."""
    keys = "\n".join(f"{key} ({dotted or 'a preset'}): {_allowed(answer_schema()['properties'][key])}"
                     for key, dotted in FIELDS.items())
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Keys:\n{keys}\n{facts}\nRequest: {text.strip() or '(none)'}"}]


def _allowed(prop: dict[str, Any]) -> str:
    schema = prop["properties"]["value"]
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    low = (f"{schema['minimum']}.." if "minimum" in schema else
           f"> {schema['exclusiveMinimum']} and <= " if "exclusiveMinimum" in schema else "")
    return f"{schema['type']} {low}{schema.get('maximum', '')}".rstrip()


def _context(path: Path, messages: list[dict[str, str]]) -> int:
    """A context that holds the prompt and the longest answer the grammar allows, so no answer
    is ever cut (a cut one would not parse): the prompt counted with the model's own tokenizer
    (its vocabulary alone loads in milliseconds), plus the chat template's few tokens."""
    import llama_cpp

    try:
        vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise AssistantModelError(f"cannot load assistant model {path}: {e}") from None
    try:
        prompt_tokens = sum(len(vocab.tokenize(m["content"].encode(), add_bos=False)) for m in messages)
    finally:
        vocab.close()
    need = prompt_tokens + TEMPLATE_TOKENS * len(messages) + max_answer_tokens()
    return -(-need // 256) * 256


def ask(path: Path, messages: list[dict[str, str]], seed: int = 0, temperature: float = 0.2,
        gpu: bool | None = None) -> Any:
    """The model's answer, parsed; the grammar makes it JSON of the schema's shape."""
    import llama_cpp

    _route_logs()
    gpu = llama_cpp.llama_supports_gpu_offload() if gpu is None else gpu
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=_context(path, messages),
                              n_gpu_layers=-1 if gpu else 0, seed=seed, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise AssistantModelError(f"cannot load assistant model {path}: {e}") from None
    try:
        grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(answer_schema()), verbose=False)
        out = llm.create_chat_completion(messages=messages, grammar=grammar, seed=seed,
                                         max_tokens=max_answer_tokens(), temperature=temperature)
    except (ValueError, RuntimeError) as e:
        raise AssistantModelError(f"assistant model {path.name} failed to answer: {e}") from None
    finally:
        llm.close()
    choice = out["choices"][0]
    if choice.get("finish_reason") == "length":  # cannot happen within the grammar's bound
        raise AssistantModelError(f"assistant model {path.name}'s answer was cut at "
                                  f"{max_answer_tokens()} tokens")
    try:
        return json.loads(choice["message"]["content"])
    except ValueError as e:  # the grammar rules it out; said plainly should a build differ
        raise AssistantModelError(f"assistant model {path.name}'s answer is not JSON: {e}") from None
