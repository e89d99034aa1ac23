"""The config assistant: a request in words ("25 photos of my dog, SDXL") and a dataset in, a
TrainConfig out, with a one-line reason for every suggested value.

A local GGUF chat model answers within a JSON-schema grammar (:mod:`.schema`, :mod:`.llm`), so
its answer always parses; dataset-aware rules (:mod:`.rules`) then fill in and correct it from
the dataset, the base model and the GPU (:mod:`.facts`), so the result always validates.
``suggest`` runs here; ``suggest_apart`` in a child process, for the Jupyter server, which must
never load llama.cpp or torch (importing this package loads neither).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import LoraLabError, NotFound
from ..workspace import Workspace

if TYPE_CHECKING:
    from .suggestion import Suggestion

__all__ = ["suggest", "suggest_apart"]


def suggest(text: str, dataset: str, *, model: str | os.PathLike | None = None, base: str = "",
            seed: int = 0, temperature: float = 0.2, workspace: Workspace | None = None) -> Suggestion:
    """Ask the model (``model``, default the caption model's GGUF) for a config for ``dataset``
    (a name or a folder) on ``base`` (default: a model of the family suggested), then apply the
    rules. The dataset, the base and the model file are checked before anything loads."""
    from .facts import gather  # the training modules: torch, which the server must not load
    from .llm import ask, model_path, prompt
    from .rules import apply_rules

    ws = workspace or Workspace()
    facts = gather(dataset, base, ws)
    path = model_path(model, ws)
    start = time.perf_counter()
    answer = ask(path, prompt(text, facts.describe()), seed, temperature)
    seconds = time.perf_counter() - start
    suggestion = apply_rules(answer, facts, text)
    suggestion.model, suggestion.seconds = path.name, seconds
    return suggestion


def suggest_apart(text: str, dataset: str, *, model: str | None = None, base: str = "", seed: int = 0,
                  workspace: Workspace | None = None, timeout: float = 600) -> dict[str, Any]:
    """:func:`suggest` in a child process (llama.cpp never loads here): its ``to_dict()`` and
    the TOML; a LoraLabError with the child's message when it refuses."""
    from .llm import AssistantModelError  # light: no llama_cpp until a model loads

    ws = workspace or Workspace()
    request = {"text": text, "dataset": dataset, "model": model, "base": base, "seed": seed,
               "workspace": str(ws.root)}
    try:
        done = subprocess.run([sys.executable, "-m", "lora_lab.assistant"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssistantModelError(f"the assistant did not answer within {timeout:.0f} s") from None
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssistantModelError(f"the assistant failed (exit {done.returncode}): {tail}") from None
    if "error" in reply:  # the same kind of error as in-process, so REST answers the same status
        kinds = {"NotFound": NotFound, "AssistantModelError": AssistantModelError}
        raise kinds.get(reply["kind"], LoraLabError)(reply["error"])
    return reply
