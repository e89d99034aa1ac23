"""Validation benchmark: a tiny LoRA trained with validation at its default interval against the
same run without validation.

    .venv/bin/python bench/bench_validation.py              # tiny SD1.5, 200 steps, 1 round (~1.5 min)
    .venv/bin/python bench/bench_validation.py --quick      # 100 steps (~50 s)
    .venv/bin/python bench/bench_validation.py --family zimage --rounds 2

Three runs train the same steps: without validation; with validation as configs get it by
default once images are held out (validation.split = 0.25: a quarter of the images scored at
validation.draws = 4 fixed draws each, every validation.every_n_steps = 100 steps and at the
end); and the same with one validation prompt rendered each time (sample.steps = 20 denoising
steps, a cost the user opts into, as with sample.every_n_steps). Timed: the training phase, from
its first step to the export, as the job's events stamp it (loading and caching are left out),
and within it the validations (the "evaluating" phases).

The share validation takes of its own run's training time is the figure that holds on a busy
machine (both parts meet the same load); the ratio to the run without validation is printed
too, from the best of ``--rounds`` alternating runs. Target (issue 16): validation at its
default interval under 5% of training time.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import argparse
import tempfile
import warnings
from pathlib import Path

from benchlib import Row, Target, print_machine, print_table, tiny_family

TARGET_SHARE = Target(ratio=0.05)  # validation time / training time without it


KINDS = {"plain": "without validation", "default": "validation, defaults",
         "prompt": "validation + 1 prompt"}


def _config(model: Path, data: Path, steps: int, kind: str):
    from lora_lab.training.config import TrainConfig

    d = {"model": {"base": str(model)},
         "dataset": {"source": str(data), "resolution": 64, "min_bucket": 64, "max_bucket": 128,
                     "trigger": "sks"},
         "train": {"max_steps": steps, "lr": 1e-4}}
    if kind != "plain":  # every other setting at its default: the interval, the draws, sample.steps
        d["validation"] = {"split": 0.25}
    if kind == "prompt":
        d["validation"]["prompts"] = ["sks, a red circle"]
    return TrainConfig.from_dict(d)


def _train_seconds(config, root: Path) -> tuple[float, float]:
    """(the training phase's seconds, the validations' seconds within it), from the events."""
    from lora_lab import Workspace
    from lora_lab.jobdir import JobRecord
    from lora_lab.training.job import train

    ws = Workspace(root)
    job = JobRecord.create("train", {"config": config.to_dict(), "gpus": 1}, ws)
    train(config, job, workspace=ws)
    phases = [(e["phase"], e["time"]) for e in job.events() if e["type"] == "phase"]
    start = next(t for p, t in phases if p == "training")
    end = next(t for p, t in phases if p == "exporting")
    validating = sum(t2 - t1 for (p1, t1), (_, t2) in zip(phases, phases[1:]) if p1 == "evaluating")
    return end - start, validating


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd15", help="a tiny model family (sd15, sdxl, zimage, ...)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each kind")
    parser.add_argument("--quick", action="store_true", help="100 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 100
    warnings.filterwarnings("ignore")

    print_machine()
    with tempfile.TemporaryDirectory(prefix="bench-validation-") as tmp:
        root = Path(tmp)
        tiny = tiny_family(root / "tiny", args.family)
        runs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
        for r in range(args.rounds):
            for kind in KINDS:
                cfg = _config(tiny[args.family], tiny["samples"], args.steps, kind)
                seconds, validating = _train_seconds(cfg, root / f"ws-{r}-{kind}")
                runs[kind].append((seconds, validating))
                print(f"round {r + 1}: {KINDS[kind]}: training {seconds:.2f} s, of it validating "
                      f"{validating:.2f} s")
    title = f"tiny {args.family}, {args.steps} steps, validation every 100 steps and at the end"
    print_table(f"validation's share of its own run ({title})", "the run's training time without "
                "its validations", [Row(KINDS[kind], min(v for _, v in runs[kind]),
                                        min(s - v for s, v in runs[kind]),
                                        TARGET_SHARE if kind == "default" else None)
                                    for kind in ("default", "prompt")])
    plain = min(s for s, _ in runs["plain"])
    print_table(f"against a run without validation ({title})", "the run without validation",
                [Row(KINDS[kind], min(s for s, _ in runs[kind]), plain) for kind in ("default", "prompt")])


if __name__ == "__main__":
    main()
