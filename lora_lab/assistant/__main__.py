"""``python -m lora_lab.assistant``: one suggestion for :func:`suggest_apart`. The request is a
JSON object on stdin; the answer, or ``{"error", "kind"}`` for a refusal, a JSON object on stdout."""
from __future__ import annotations

import json
import sys

from ..errors import LoraLabError
from ..workspace import Workspace
from . import suggest


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        s = suggest(request["text"], request["dataset"], model=request["model"], base=request["base"],
                    seed=request["seed"], workspace=Workspace(request["workspace"]))
    except LoraLabError as e:
        print(json.dumps({"error": str(e), "kind": type(e).__name__}))
        return 1
    print(json.dumps({**s.to_dict(), "toml": s.toml(request["text"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
