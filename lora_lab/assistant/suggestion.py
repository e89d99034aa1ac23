"""A suggested config with a reason for each suggested value: as JSON, as lines to read, and as a
TOML file `lora-lab train` takes, each reason a comment above its key."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from ..atomic import write_text
from ..calc import StepPlan
from ..training.config import TrainConfig
from ..training.sections import show_value
from .facts import Facts


@dataclass(frozen=True)
class Reason:
    value: Any
    reason: str
    source: str  # "model" (its value and words), "rule" (set or corrected by a rule), "preset"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason, "source": self.source}


@dataclass
class Suggestion:
    """A valid config with a reason for every suggested value."""
    config: TrainConfig
    preset: str
    reasons: dict[str, Reason]  # "preset" and dotted config keys
    facts: Facts
    plan: StepPlan
    answer: Any  # the model's answer as it parsed
    model: str = ""  # the GGUF file that answered
    seconds: float = 0.0  # the model's time

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "preset": self.preset,
                "reasons": {k: r.to_dict() for k, r in self.reasons.items()},
                "total_steps": self.plan.total_steps, "steps": self.plan.explain(),
                "facts": self.facts.to_dict(), "answer": _strict(self.answer), "model": self.model,
                "seconds": round(self.seconds, 3)}

    def lines(self) -> list[str]:
        """``key = value  (source) reason`` for each suggested value, then the step count."""
        width = max(map(len, self.reasons))
        out = [f"{key:<{width}} = {_show(r.value)}  [{r.source}] {r.reason}" for key, r in self.reasons.items()]
        return [*out, f"{self.plan.total_steps} steps: {self.plan.explain()}"]

    def toml(self, request: str = "") -> str:
        """The whole config as TOML, each suggested value's reason a comment above it."""
        head = ["# lora_lab training config suggested by `lora-lab suggest`"]
        if one_line(request):
            head.append(f"# request: {one_line(request)}")
        preset = self.reasons["preset"]
        head += [f"# preset {preset.value} [{preset.source}]: {preset.reason}",
                 f"# {self.plan.total_steps} steps: {self.plan.explain()}"]
        lines = head
        for table, values in self.config.to_dict().items():
            lines += ["", f"[{table}]"]
            for key, value in values.items():
                reason = self.reasons.get(f"{table}.{key}")
                if reason:
                    lines.append(f"# [{reason.source}] {reason.reason}")
                lines.append(tomli_w.dumps({key: value}).rstrip("\n"))
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike, request: str = "") -> Path:
        """Write :meth:`toml` atomically (creating the folder); return the path."""
        text = self.toml(request)
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_text(p, text)
        return p


def _strict(v: Any) -> Any:
    """The answer as strict JSON takes it: a number too large for a float (1e999 parses as
    infinity) becomes its text."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    return [_strict(x) for x in v] if isinstance(v, list) else v


def _show(v: Any) -> str:
    if isinstance(v, list):
        return "; ".join(v) if v else "(none)"
    return f"{v:g}" if isinstance(v, float) else show_value(v)


def one_line(text: str, limit: int = 200) -> str:
    """``text`` as one printable line (a TOML comment takes no control characters), shortened."""
    line = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."
