"""``python -m lora_lab.jobs JOB_DIR|URL [--resume] [--slots N] [--executor ray [--follow]]``:
the process of one background job.

The job runner starts it detached; it waits its turn for a GPU slot, then runs the job its
spec describes (directly, or through the notebook the spec names) with its output in log.txt.
With ``--executor ray`` it is the job's dispatcher instead: it submits the job to the Ray
cluster, whose process runs this module again with ``--slots 0``: with the job's folder, or
with its URL in the bucket (:mod:`.bucket_jobs`), which it downloads and runs in a scratch copy.
With ``--follow`` too, it only pulls such a job's writes here again, its dispatcher gone
(:func:`.executors.reattach` starts it).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..errors import LoraLabError
from ..jobdir import ACTIVE, JobRecord
from .bucket_jobs import run_from_bucket
from .execute import run_job, run_notebook
from .executors import dispatch, refollow
from .kinds import kind_of
from .slots import holding_slots

# Below the server and the kernels in CPU priority: a job on a busy CPU takes only what they
# leave, so pages and status requests stay quick (a GPU-bound job barely notices).
NICENESS = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.jobs")
    parser.add_argument("job", help="job directory (workspace/jobs/ID), or its URL in the bucket")
    parser.add_argument("--resume", action="store_true", help="continue where it stopped")
    parser.add_argument("--slots", type=int, default=1,
                        help="jobs that may run at once (0: take none, the executor gave its GPUs)")
    parser.add_argument("--executor", choices=["ray"],
                        help="submit it to a Ray cluster once the cluster has its GPUs free")
    parser.add_argument("--follow", action="store_true",
                        help="with --executor ray: pull the writes of the job, submitted already "
                             "with its folder in the bucket, here again until it ends")
    args = parser.parse_args(argv)
    # a cancel is a Ctrl-C: heard even where whoever started the server ignored it (a pod's
    # `nohup jupyter lab &` does, and every process started from it inherits that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if "://" in args.job:  # a Ray worker's: the job's folder is in the bucket
        try:
            return run_from_bucket(args.job, args.resume)
        except LoraLabError as e:
            print(f"lora-lab: error: {e}", flush=True)
            return 1
    job = JobRecord(Path(args.job).resolve())
    if args.follow:  # its dispatcher is gone; the job runs on
        refollow(job)
        return 0
    ws = job.workspace
    os.nice(NICENESS)
    job.set_status("queued", pgid=os.getpgrp())
    try:
        spec = job.spec()
        if args.executor == "ray":
            dispatch(job, args.resume)
            return 0
        with holding_slots(job, ws, args.slots, kind_of(spec["kind"]).gpus(spec["params"])):
            if spec.get("notebook"):
                run_notebook(job, Path(spec["notebook"]), args.resume)
                if job.status()["state"] in ACTIVE:
                    raise LoraLabError(f"the notebook {spec['notebook']} ended without running "
                                       "the job (it should call lora_lab.jobs.run_job(job_dir, "
                                       "resume))")
            else:
                run_job(job.path, args.resume)
    except BaseException as e:
        if job.status()["state"] in ACTIVE:  # ended before the job's own code recorded it
            job.record_end(e)
        print(f"lora-lab: {'error: ' + str(e) if isinstance(e, Exception) else 'stopped'}", flush=True)
        return 1 if isinstance(e, LoraLabError) else 2 if isinstance(e, Exception) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
