"""`lora-lab doctor` from a cold start, as a user runs it: a new Python process that imports the
CLI, runs every check and prints the table, on a fresh workspace.

    .venv/bin/python bench/bench_doctor.py               # 10 runs of each (~15 s on a CPU box)
    .venv/bin/python bench/bench_doctor.py --repeats 3

Floor, measured in the same run: a bare `python -c pass`, the least any command costs. On a box
without a GPU torch is never imported, so the goal is under 2 s; on a GPU box the torch and
bf16 lines import torch and read the GPU (seconds more, reported as they are).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from benchlib import Row, Target, p50, print_machine, print_table, timed

DOCTOR = "from lora_lab.cli import main; raise SystemExit(main(['doctor']))"  # as the lora-lab script
IMPORT = "import lora_lab.cli"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs of each")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    print_machine()
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        env = {**os.environ, "LORA_LAB_HOME": os.path.join(tmp, "ws")}
        floor, doctor, imported = _medians([["-c", "pass"], ["-c", DOCTOR], ["-c", IMPORT]], env,
                                           args.repeats)
    print_table(f"lora-lab doctor, a new process each run, median of {args.repeats}",
                "python -c pass", [Row("lora-lab doctor", doctor, floor, Target(ms=2000)),
                                   Row("of which: import lora_lab.cli", imported, floor)])


def _medians(commands: list[list[str]], env: dict[str, str], repeats: int) -> list[float]:
    """Each command's median time, the commands taking turns (a busy moment on a shared box
    then slows all of them, not one)."""
    def run(args: list[str]) -> None:
        done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
        if done.returncode not in (0, 1):  # 1: a check failed, which the table shows
            raise SystemExit(f"{args} failed:\n{done.stderr}")

    times: list[list[float]] = [[] for _ in commands]
    for args in commands:  # warm: the page cache holds the modules
        run(args)
    for _ in range(repeats):
        for i, args in enumerate(commands):
            times[i].append(timed(lambda a=args: run(a)))
    return [p50(t) for t in times]


if __name__ == "__main__":
    main()
