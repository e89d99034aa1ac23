"""``python -m lora_lab.training JOB_DIR [--resume]``: run the training a job directory's spec
describes. ``lora-lab train --gpus N`` starts it under ``accelerate launch``, once per rank."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import LoraLabError
from ..jobdir import JobRecord
from .config import TrainConfig
from .job import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.training")
    parser.add_argument("job", type=Path, help="job directory (workspace/jobs/ID)")
    parser.add_argument("--resume", action="store_true", help="continue from its last checkpoint")
    args = parser.parse_args(argv)
    job = JobRecord(args.job.resolve())
    try:
        config = TrainConfig.from_dict(job.spec()["params"]["config"])
        train(config, job, resume=args.resume, workspace=job.workspace)
    except LoraLabError as e:
        print(f"lora-lab: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
