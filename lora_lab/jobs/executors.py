"""Where a job's process runs: its executor starts it, tells whether it lives, and stops it.

- ``local`` (the default): a detached process on this box that waits for its GPU slots here.
- ``ray`` (``lora_lab[ray]``): a Ray job on a cluster. Ray Jobs is not a queue (a job that cannot
  start within 15 minutes fails), so lora_lab's queue stays in front: a local dispatcher process
  waits until the cluster has the job's GPUs free, then submits ``python -m lora_lab.jobs JOB``
  under the job's id and exits (or, for a folder in the bucket, follows it). The job folder must
  lie where every node sees it at the same path (one box, or a shared network volume), or in the
  bucket (:mod:`.bucket_jobs`). A job over several GPUs asks Ray for none for its own process:
  its Ray workers take them, one each (a caption job's actors, :mod:`lora_lab.captioning.pool`;
  a train job's Ray Train workers, :mod:`lora_lab.training.ray_train`).

``status.json`` records ``executor`` and, for Ray, its ``handle`` (the cluster's Jobs API address
and the submission id). A Ray job is judged alive by its heartbeat, then by asking Ray; a
process id only ever counts for a process on this box. A job whose folder is in the bucket and
whose dispatcher is gone (this box restarted) gets a follower of its own (:func:`reattach`).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .. import cluster, ray_jobs
from ..errors import LoraLabError, Unavailable
from ..jobdir import ACTIVE, JobRecord, list_jobs, pid_alive
from ..jobdir.record import ray_submission
from ..workspace import Workspace
from . import bucket_jobs
from .bucket_captions import CaptionsBack
from .kinds import kind_of

EXECUTORS = ("local", "ray")
POLL_S = 1.0
STOP_GRACE_S = 10  # a Ray job's time to save its checkpoint after the SIGINT (cancel's default)


def chosen(name: str | None) -> str:
    """The executor a job asks for: ``name``, else ``$LORA_LAB_EXECUTOR``, else local."""
    return name or os.environ.get("LORA_LAB_EXECUTOR") or "local"


def check_executor(name: str | None, ws: Workspace) -> str:
    """The executor a job runs on (:func:`chosen`), checked before any job exists: a known
    one, and for Ray installed, configured and reachable."""
    name = chosen(name)
    if name not in EXECUTORS:
        raise LoraLabError(f"executor must be one of {', '.join(EXECUTORS)}, not {name!r}")
    if name == "ray":
        if not cluster.ray_installed():  # checked without importing Ray: that takes seconds
            raise Unavailable(f"a job on a Ray cluster needs Ray: {cluster.PIP_LINE}")
        cluster.cluster_resources(cluster.dashboard_url(ws))
    return name


def start(job: JobRecord, executor: str, *, resume: bool, slots: int) -> None:
    """Start the job's local process: the job itself, or (Ray) the dispatcher that submits it."""
    fields: dict[str, Any] = {"executor": executor, "handle": None}
    args = ["--slots", str(slots)]
    if executor == "ray":
        url = (job.status().get("handle") or {}).get("url") if resume else bucket_jobs.jobs_url() and \
            bucket_jobs.job_url(job.id)
        fields["handle"] = {"address": cluster.dashboard_url(job.workspace), "submission_id": None,
                            **({"url": url} if url else {})}
        args += ["--executor", "ray"]
    # pid = ours until the child writes its own: "queued", not "interrupted", meanwhile
    job.set_status("queued", queued_at=time.time(), error=None, phase=None, progress=None, **fields)
    proc = _spawn(job, args + (["--resume"] if resume else []))
    if job.status().get("pid") == os.getpid():
        job.set_status("queued", pid=proc.pid, pgid=proc.pid)


def _spawn(job: JobRecord, args: list[str], keep: int | None = None) -> subprocess.Popen:
    """``python -m lora_lab.jobs JOB ARGS``, detached, its output in the job's log; ``keep``: a
    file descriptor it inherits (a lock it then holds)."""
    cmd = [sys.executable, "-m", "lora_lab.jobs", str(job.path), *args]
    with open(job.log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=job.path, pass_fds=() if keep is None else (keep,),
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it: no zombie to mistake for alive
    return proc


def stop(job: JobRecord, view: dict[str, Any], grace_s: float) -> None:
    """Ask the job to stop as Ctrl-C does (a training job saves a checkpoint), then kill it
    after ``grace_s`` (a Ray job: after the grace set when it was submitted)."""
    sid = ray_submission(view)
    if sid is None:
        _stop_local(view, grace_s)
        return
    address, url = view["handle"]["address"], view["handle"].get("url")
    if url:  # the worker passes it on as one Ctrl-C; Ray's stop only if it does not end in time
        bucket_jobs.request_cancel(url)
        _ended(address, sid, STOP_GRACE_S + 5)
    if not url or ray_jobs.state(address, sid) in ray_jobs.RAY_ACTIVE:
        ray_jobs.stop(address, sid)  # SIGINT first: the grace period was set at submission
    _ended(address, sid, STOP_GRACE_S + 10)
    # the dispatcher pulls the worker's last words: wait for them rather than write over them
    deadline = time.monotonic() + 10 * bucket_jobs.POLL_S
    while url and job.status()["state"] in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.2)


def _ended(address: str, sid: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while ray_jobs.state(address, sid) in ray_jobs.RAY_ACTIVE and time.monotonic() < deadline:
        time.sleep(0.2)


def dispatch(job: JobRecord, resume: bool) -> None:
    """The Ray dispatcher's work: wait until the cluster has the job's GPUs free (a job asking
    for more than the cluster has waits, saying why), submit it, and return once Ray runs it;
    with its folder in the bucket, once it ended, having pulled its writes here meanwhile."""
    in_bucket = job.status()["handle"].get("url")  # then followed from here: no re-attach meanwhile
    with _following(job, wait=True) if in_bucket else contextlib.nullcontext():
        mirror = _wait_and_submit(job, resume)
        if mirror:
            _follow(job, mirror, job.status()["handle"]["address"])


def _wait_and_submit(job: JobRecord, resume: bool) -> bucket_jobs.Mirror | None:
    status = job.status()
    address, need = status["handle"]["address"], _gpus(job)
    lock_path = job.workspace.jobs / ".slots" / "ray.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with job.heartbeat(), open(lock_path, "w") as lock:
        while True:
            reason = _wait_reason(job, address, need)
            if reason is None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one dispatcher submits at a time: no two
                reason = _wait_reason(job, address, need)  # take the same free GPUs
                if reason is None:
                    return _submit(job, address, need, resume)
                fcntl.flock(lock, fcntl.LOCK_UN)
            if job.status().get("reason") != reason:
                job.set_status("queued", phase="waiting for the Ray cluster", reason=reason)
            time.sleep(POLL_S)


def reattach(ws: Workspace) -> list[JobRecord]:
    """Follow again each job on the Ray cluster with its folder in the bucket that nothing here
    follows any more (this box restarted while it ran, or before its end was pulled): a process
    that pulls its writes as its dispatcher did, until it ends. Returns those jobs."""
    started = []
    for job in list_jobs(ws):
        with contextlib.suppress(OSError, ValueError, KeyError):
            held = _following(job, wait=False) if _followable(job.status()) else None
            if held:
                with held:  # the follower inherits it: held without a gap
                    _spawn(job, ["--executor", "ray", "--follow"], keep=held.fileno())
                started.append(job)
    return started


def _followable(status: dict[str, Any]) -> bool:
    """A job not ended here, on the Ray cluster with its folder in the bucket, that the cluster
    knows (one gone or restarted has nothing to follow)."""
    sid = ray_submission(status)
    return bool(status["state"] in ACTIVE and sid and status["handle"].get("url")) and \
        ray_jobs.state(status["handle"]["address"], sid) is not None


def refollow(job: JobRecord) -> None:
    """A re-attached follower's work (see :func:`reattach`, which holds the follow lock for it)."""
    with open(job.path / bucket_jobs.FOLLOWING, "r+") as f:  # in place: the lock is on this file
        _sign(f)
    handle = job.status()["handle"]
    _follow(job, bucket_jobs.mirror_of(job, handle["url"]), handle["address"])


def _following(job: JobRecord, wait: bool) -> IO[str] | None:
    """The job's follow lock, held (a file to close to let go) with this process's id in it,
    or None when another process holds it."""
    f = open(job.path / bucket_jobs.FOLLOWING, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        f.close()
        return None
    _sign(f)
    return f


def _sign(f: IO[str]) -> None:
    """The follow lock's file names the process that holds it."""
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()


def _follow(job: JobRecord, mirror: bucket_jobs.Mirror, address: str) -> None:
    """Pull the worker's writes until its Ray job ends; a caption job's captions go into the
    dataset here as they come."""
    sid = job.status()["handle"]["submission_id"]
    captions = CaptionsBack(job) if job.spec()["kind"] == "caption" else None
    try:
        bucket_jobs.follow(mirror, lambda: ray_jobs.state(address, sid) in ray_jobs.RAY_ACTIVE,
                           captions.apply if captions else lambda: None)
    finally:
        if captions:
            captions.close()
    if job.status()["state"] in ACTIVE:  # it ended before the job could say why: Ray's log
        with open(job.log_path, "a", encoding="utf-8") as log:
            log.write(ray_jobs.logs(address, sid)[-20000:])


def _wait_reason(job: JobRecord, address: str, need: int) -> str | None:
    """Why ``job``, needing ``need`` GPUs, cannot start on the cluster now; None when it can."""
    try:
        res = cluster.cluster_resources(address)
    except LoraLabError as e:
        return str(e)
    if need > res["gpus"]:
        return (f"it asks for {need} GPUs and the Ray cluster at {address} has {res['gpus']}; "
                "join more nodes (lora-lab cluster start prints the line) or ask for fewer")
    # the dashboard counts a job's GPUs a second or two late: lora_lab's own jobs count at once
    free = min(res["gpus_free"], res["gpus"] - _held(job, address))
    if need > free:
        return f"waiting for {need} free GPUs on the Ray cluster ({free} free)"
    return None


def _held(job: JobRecord, address: str) -> int:
    """The GPUs of the workspace's other jobs submitted to the cluster at ``address`` and not ended."""
    held = 0
    for other in list_jobs(job.workspace):
        with contextlib.suppress(OSError, ValueError, KeyError):
            view = other.view()
            if other.id != job.id and view["state"] in ACTIVE and ray_submission(view) and \
                    view["handle"]["address"] == address:
                held += _gpus(other)
    return held


def _submit(job: JobRecord, address: str, need: int, resume: bool) -> bucket_jobs.Mirror | None:
    """Submit the job to Ray; with its folder in the bucket, put it there first (the mirror
    that then follows the worker's writes)."""
    resumes = sum(e["type"] == "resumed" for e in job.events())
    sid = job.id if not resumes else f"{job.id}-r{resumes}"  # Ray ids are never reused
    url = job.status()["handle"].get("url")
    job.set_status("queued", phase="starting on the Ray cluster", reason=None,
                   handle={"address": address, "submission_id": sid, **({"url": url} if url else {})})
    python = Path(sys.executable)
    env = {"PATH": f"{python.parent}:${{PATH}}",  # Ray expands ${PATH} on the node
           "PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_SIGNAL": "SIGINT",
           "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), ray_jobs.JOB_ENV: sid}
    entry = f"python -m lora_lab.jobs {shlex.quote(url or str(job.path))} --slots 0"
    entry += " --resume" if resume else ""
    mirror = None
    if url:  # the worker writes its log into its copy of the folder
        mirror = bucket_jobs.upload_for_run(job, url, resume)
        env.update(bucket_jobs.worker_env())
    else:
        entry += f" >> {shlex.quote(str(job.log_path))} 2>&1"
    spec = job.spec()  # its workers' GPUs are theirs to take: the job still holds them (_held)
    own = need - kind_of(spec["kind"]).actor_gpus(spec["params"])
    ray_jobs.submit(address, sid, entry, gpus=own, env=env)
    while ray_jobs.state(address, sid) == "PENDING":  # the lock is held until Ray placed it
        time.sleep(0.2)
    return mirror


def _gpus(job: JobRecord) -> int:
    spec = job.spec()
    return kind_of(spec["kind"]).gpus(spec["params"])


def _stop_local(view: dict[str, Any], grace_s: float) -> None:
    pid = view["pid"]
    _signal(view, signal.SIGINT)
    if not _exited(pid, grace_s):
        _signal(view, signal.SIGKILL)
        _exited(pid, 5.0)


def _signal(view: dict[str, Any], sig: int) -> None:
    """``sig`` to the job's process group (data-parallel ranks included), else its process."""
    try:
        if view.get("pgid"):
            os.killpg(view["pgid"], sig)
        else:
            os.kill(view["pid"], sig)
    except ProcessLookupError:
        pass


def _exited(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
