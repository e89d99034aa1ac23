"""Job folders in the bucket, for Ray jobs on nodes that share no filesystem with this box.

With ``$LORA_LAB_JOBS_URL`` set (``s3://BUCKET/PREFIX/jobs``, inside the configured bucket, see
:mod:`lora_lab.bucket`), a job on the Ray executor keeps its folder at ``JOBS_URL/ID`` too:

    spec.json, status.json     whole objects, replaced
    events/000001.jsonl        events in segments named by their first event's number (object
                               stores cannot append); an ``events.jsonl`` object is read as well
    log.txt, checkpoints/...   the folder's other files, each uploaded whole after its local write
    outputs/<path>             LoRA files the job wrote outside its folder, keyed by their path
    captions/...               a caption job's journal entry and caption sources (:mod:`.bucket_captions`)
    places.json                where the inputs below lie here, where the outputs go
    cancel-requested           a cancel's word to the worker

and beside the jobs, ``JOBS_URL/inputs/DIGEST-NAME/``: the base model, dataset, caption model ...
a spec names, staged for the workers, one copy while the files stay the same.

The bucket speaks in this box's paths; the worker runs the job in a scratch workspace and
translates paths both ways (:class:`Places`). The dispatcher here uploads the folder and the
inputs before it submits (:func:`upload_for_run`), then pulls what the worker writes until the
Ray job ends (:func:`follow`); the worker (:func:`run_from_bucket`) downloads them, runs the job
as a child process and pushes what changed every half second, and once more at the end.

A train job on several GPUs runs as Ray Train workers (:mod:`lora_lab.training.ray_train`): rank 0,
placed on the worker's node, alone writes the folder; ranks on other nodes fetch only the inputs,
to the same scratch paths (:func:`stage_inputs`), as a caption job's actors there fetch its
model (:func:`on_any_node`).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import atomic
from ..bucket import Bucket, BucketURL, configured_url, open_bucket, within
from ..datasets.dataset import META, dataset_path
from ..errors import LoraLabError
from ..jobdir import ACTIVE, JobRecord
from ..workspace import Workspace
from . import bucket_captions

ENV_JOBS_URL = "LORA_LAB_JOBS_URL"
T = TypeVar("T")
_INPUT_ENV = ("LORA_LAB_CAPTION_MODEL", "LORA_LAB_CAPTION_MMPROJ")  # inputs named by environment
POLL_S = 0.5
RESEND_S = 5.0  # a file pushed already and changed since waits this long to go again
_SEGMENT = re.compile(r"^events/(\d{6,})\.jsonl$")
_TRANSLATED = ("spec.json", "status.json")  # the JSON files that name paths
FOLLOWING = ".following"  # held by the process on this box that pulls the job's writes
_NOT_MIRRORED = ("events.jsonl", "cancel-requested", "places.json", FOLLOWING)
_SHARED_ENV = ("LORA_LAB_BUCKET", "LORA_LAB_BUCKET_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


def jobs_url() -> str | None:
    """Where Ray jobs keep their folders: ``$LORA_LAB_JOBS_URL``, or None (a shared filesystem)."""
    return os.environ.get(ENV_JOBS_URL, "").strip().rstrip("/") or None


def check(kind: str, url: str | None = None) -> Bucket | None:
    """For a job on Ray: the bucket its folder (``url``, default under :func:`jobs_url`) goes to,
    that URL inside the configured bucket and the credentials proven, before any job exists or
    resumes; None when folders lie on a shared filesystem."""
    url = url or jobs_url()
    if url is None:
        return None
    unset = f"; run it on a cluster that shares the workspace's filesystem (unset ${ENV_JOBS_URL})"
    if kind not in ("train", "caption"):
        raise LoraLabError(f"a {kind} job cannot keep its folder in the bucket: it runs on this "
                           f"box{unset}, or here")
    within(url, configured_url())
    return open_bucket()


def worker_env() -> dict[str, str]:
    """What a worker needs to reach the bucket: its settings and the credentials in this
    environment (a node may have its own instead: an instance role, ~/.aws)."""
    return {k: os.environ[k] for k in _SHARED_ENV if os.environ.get(k)}


@dataclass
class Places:
    """Where the job's paths lie on each side: (here, there) pairs; the bucket speaks here's."""
    pairs: list[tuple[str, str]]

    def there(self, text: str) -> str:
        return _swap(text, self.pairs)

    def here(self, text: str) -> str:
        return _swap(text, [(b, a) for a, b in self.pairs])


def _swap(text: str, pairs: list[tuple[str, str]]) -> str:
    """Each path prefix replaced, in one pass (a replacement is never replaced again), where a
    whole path segment ends (``/ws`` is not in ``/ws2``), the longest first."""
    if not pairs:
        return text
    swap = dict(pairs)
    olds = "|".join(re.escape(old) for old in sorted(swap, key=len, reverse=True))
    return re.sub(f'(?:{olds})(?=[/"\\\\]|$)', lambda m: swap[m[0]], text, flags=re.M)


@dataclass
class Mirror:
    """A local copy of the job folder kept in step with the bucket's, in one direction at a time:
    :meth:`push` sends what changed here, :meth:`pull` fetches what changed there."""
    bucket: Bucket
    url: BucketURL  # the job folder's
    folder: Path
    places: Places = field(default_factory=lambda: Places([]))
    sent: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # rel -> size, mtime, when
    got: dict[str, str] = field(default_factory=dict)  # rel -> ETag pulled
    remote_events: int | None = None  # events the bucket holds
    targets: tuple[Path, ...] = ()  # where pulled LoRA files may go: the workspace, output_dir
    status_text: str = ""  # the status last pulled
    extra: dict[str, Path] = field(default_factory=dict)  # rel -> a file outside the folder, pushed too

    def key(self, rel: str) -> str:
        return f"{self.url.bucket}/{self.url.key(rel)}"

    def listing(self) -> dict[str, dict[str, Any]]:
        root = self.key("")
        self.bucket.fs.invalidate_cache(root)
        try:
            found = self.bucket.fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
        return {name[len(root):].lstrip("/"): info for name, info in found.items()
                if info.get("type") != "directory"}

    # -- this side to the bucket -----------------------------------------------------------------
    def push(self, files: bool = True, final: bool = False) -> None:
        """The folder's changed files, then its LoRA files, its new events and last its record
        (spec, status), so that whoever reads an event or the status finds the files they name.
        The record is read once, first: a status the job writes meanwhile goes next time, after
        what it names. A file that keeps growing (log.txt, TensorBoard's) goes again at most
        every :data:`RESEND_S`, except in the ``final`` push, or once the status says the job
        ended (a caption job's journal must be whole by then); without ``files``, only the
        events and the record."""
        record = {rel: _snapshot(self.folder / rel) for rel in _TRANSLATED}
        status = _parsed(record["status.json"])
        final = final or status.get("state", "queued") not in ACTIVE
        if files:
            self._push_files(final, _outputs_of(status, self.folder))
        self._push_events()
        for rel, snapshot in record.items():
            if snapshot:
                self._send_text(rel, *snapshot)

    def _push_files(self, final: bool, outputs: list[Path]) -> None:
        files = {rel: p for rel, p in _files(self.folder).items() if rel not in _TRANSLATED}
        for rel, path in {**files, **self.extra}.items():
            self._send(rel, path, final)
        for gone in [r for r in self.sent if r not in files and r not in _TRANSLATED and
                     r not in self.extra and not r.startswith("outputs/")]:
            with contextlib.suppress(FileNotFoundError):  # a rotated checkpoint
                self.bucket.fs.rm_file(self.key(gone))
            del self.sent[gone]
        for lora in outputs:
            self._send("outputs/" + self.places.here(str(lora)).lstrip("/"), lora, final)

    def _send(self, rel: str, path: Path, final: bool) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        before = self.sent.get(rel)
        if before and (before[:2] == (st.st_size, st.st_mtime_ns) or
                       not final and time.monotonic() - before[2] < RESEND_S):
            return
        self.bucket.fs.put_file(str(path), self.key(rel))
        self.sent[rel] = (st.st_size, st.st_mtime_ns, time.monotonic())

    def _send_text(self, rel: str, st: os.stat_result, text: str) -> None:
        if self.sent.get(rel, ())[:2] != (st.st_size, st.st_mtime_ns):
            self.bucket.fs.pipe_file(self.key(rel), self.places.here(text).encode())
            self.sent[rel] = (st.st_size, st.st_mtime_ns, time.monotonic())

    def _push_events(self) -> None:
        if self.remote_events is None:
            self.remote_events = len(_remote_events(self, self.listing()))
        lines = _complete_lines(self.folder / "events.jsonl")[self.remote_events:]
        if lines:
            text = self.places.here("".join(lines))
            self.bucket.fs.pipe_file(self.key(f"events/{self.remote_events + 1:06d}.jsonl"), text.encode())
            self.remote_events += len(lines)

    # -- the bucket to this side -----------------------------------------------------------------
    def pull(self, received: Callable[[], None] = lambda: None) -> None:
        """What the worker wrote since the last pull: files, LoRA files, events, then the status.
        The status is read before the listing: whatever it names was pushed before it, so is
        listed. ``received()`` runs before the status is replaced (a caption job's captions are
        in the dataset when it reads succeeded)."""
        status = self.places.there(self.bucket.fs.cat_file(self.key("status.json")).decode())
        listing = self.listing()
        for rel, info in listing.items():
            if _mirrored(rel) and rel not in _TRANSLATED and not rel.startswith("outputs/"):
                self._fetch(rel, info, self.folder / rel)
        for gone in [r for r in self.got if r not in listing and not r.startswith("outputs/")]:
            (self.folder / gone).unlink(missing_ok=True)  # a rotated checkpoint
            del self.got[gone]
        for lora in _outputs_of(json.loads(status), self.folder):
            rel = "outputs/" + self.places.here(str(lora)).lstrip("/")
            if rel in listing and lora.suffix == ".safetensors" and \
                    any(lora.is_relative_to(t) for t in self.targets):
                self._fetch(rel, listing[rel], lora)
        self._pull_events(listing)
        received()
        if status != self.status_text:
            atomic.write_text(self.folder / "status.json", status)
            self.status_text = status

    def _fetch(self, rel: str, info: dict[str, Any], target: Path) -> None:
        if self.got.get(rel) == info.get("ETag"):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.pull.tmp"
        self.bucket.fs.get_file(self.key(rel), str(tmp))
        os.replace(tmp, target)
        self.got[rel] = info.get("ETag")

    def _pull_events(self, listing: dict[str, dict[str, Any]]) -> None:
        have = len(_complete_lines(self.folder / "events.jsonl"))
        new = _remote_events(self, listing, have)
        if new:
            with open(self.folder / "events.jsonl", "a", encoding="utf-8") as f:
                f.write(self.places.there("".join(new)))


def _remote_events(mirror: Mirror, listing: dict[str, dict[str, Any]], have: int = 0) -> list[str]:
    """The bucket's events after the first ``have``, as lines: an ``events.jsonl`` object, then
    the segments in order; only segments past ``have`` are read."""
    segments = sorted((int(m[1]), rel) for rel in listing if (m := _SEGMENT.match(rel)))
    lines: list[str] = []
    if "events.jsonl" in listing and (not segments or have < segments[0][0] - 1):
        lines = _lines(mirror.bucket.fs.cat_file(mirror.key("events.jsonl")).decode("utf-8"))[have:]
    for number, rel in segments:
        if number <= have:
            continue
        if number != have + len(lines) + 1:  # a segment written while this one was listed: next time
            break
        lines += _lines(mirror.bucket.fs.cat_file(mirror.key(rel)).decode("utf-8"))
    return lines


def _lines(text: str) -> list[str]:
    return text[:text.rfind("\n") + 1].splitlines(keepends=True)


def _complete_lines(path: Path) -> list[str]:
    try:
        return _lines(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []


def _mirrored(rel: str) -> bool:
    parts = rel.split("/")
    return not (rel in _NOT_MIRRORED or _SEGMENT.match(rel) or any(p.endswith(".tmp") for p in parts))


def _files(folder: Path) -> dict[str, Path]:
    """The folder's complete files by relative path, a checkpoint's state.json after its others
    (it marks the checkpoint complete), none being written (``*.tmp``)."""
    found = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
    mirrored = [rel for rel in found if _mirrored(rel)]
    return {rel: found[rel] for rel in sorted(mirrored, key=lambda r: (Path(r).name == "state.json", r))}


def _snapshot(path: Path) -> tuple[os.stat_result, str] | None:
    """A file's stat and text, stat first: a file replaced in between looks changed next time."""
    try:
        return path.stat(), path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _parsed(snapshot: tuple[os.stat_result, str] | None) -> dict[str, Any]:
    try:
        record = json.loads(snapshot[1]) if snapshot else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _outputs_of(status: dict[str, Any], folder: Path) -> list[Path]:
    """The LoRA files a status records that lie outside the job folder."""
    paths = [e.get("path") for e in status.get("loras") or [] if isinstance(e, dict)]
    paths.append(status.get("output"))
    return [Path(p) for p in dict.fromkeys(paths) if isinstance(p, str) and p and
            not Path(p).is_relative_to(folder)]


# -- the dispatcher, on this box --------------------------------------------------------------
def job_url(job_id: str) -> str:
    return f"{jobs_url()}/{job_id}"


def mirror_of(job: JobRecord, url: str) -> Mirror:
    """The mirror that brings the job's writes here; the files this copy holds already (by
    size) are not fetched again."""
    output_dir = _output_dir(job.spec())
    mirror = Mirror(open_bucket(), within(url, configured_url()), job.path,
                    targets=(job.workspace.root, *([Path(output_dir)] if output_dir else [])))
    for rel, info in mirror.listing().items():
        with contextlib.suppress(OSError):
            if (job.path / rel).stat().st_size == int(info["size"]):
                mirror.got[rel] = info.get("ETag")
    return mirror


def upload_for_run(job: JobRecord, url: str, resume: bool) -> Mirror:
    """Put the job's folder in the bucket, with its inputs the first time, before the worker
    starts: the worker sees the status and events as they are here, and no stale cancel."""
    mirror = mirror_of(job, url)
    if not resume:
        _stage_inputs(mirror, job)
    with contextlib.suppress(FileNotFoundError):
        mirror.bucket.fs.rm_file(mirror.key("cancel-requested"))
    mirror.push(files=not resume)  # a resumed job's files are there already (pulled from there)
    mirror.got = {rel: info.get("ETag") for rel, info in mirror.listing().items()}
    return mirror


def follow(mirror: Mirror, running: Callable[[], bool], received: Callable[[], None] = lambda: None) -> None:
    """Pull the worker's writes every half second while ``running()``, then once more
    (``received``: see :meth:`Mirror.pull`)."""
    while running():
        time.sleep(POLL_S)
        with contextlib.suppress(OSError, ValueError):  # a dropped connection: next time
            mirror.pull(received)
    mirror.pull(received)


def request_cancel(url: str) -> None:
    """Ask the worker to cancel the job: it reads this within half a second and gives the job
    its Ctrl-C (a checkpoint is saved, the job records cancelled)."""
    bucket = open_bucket()
    parsed = within(url, configured_url())
    bucket.fs.pipe_file(f"{parsed.bucket}/{parsed.key('cancel-requested')}", f"{time.time()}\n".encode())


def _stage_inputs(mirror: Mirror, job: JobRecord) -> None:
    """Upload the inputs the spec names, each once for all jobs while it stays the same (a
    sweep's jobs share one copy of the base model), and ``places.json``: where each lies here."""
    ws = job.workspace
    shared = f"{mirror.url.bucket}/{mirror.url.prefix.rsplit('/', 1)[0]}/inputs"
    inputs = []
    for path in _inputs(job.spec(), ws):
        files = _input_files(path)
        identity = [str(path)] + [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        key = f"{shared}/{hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]}-{path.name}"
        if not mirror.bucket.fs.exists(f"{key}.complete"):
            names = [str(f.relative_to(path)) for f in files] if path.is_dir() else [path.name]
            mirror.bucket.fs.put([str(f) for f in files], [f"{key}/{n}" for n in names])
            mirror.bucket.fs.pipe_file(f"{key}.complete", b"")  # the upload finished
        inputs.append({"path": str(path), "key": key, "dir": path.is_dir()})
    output_dir = _output_dir(job.spec())
    places = {"root": str(ws.root), "inputs": inputs,
              "outputs": [output_dir] if output_dir and not Path(output_dir).is_relative_to(ws.root) else [],
              "env": {k: os.environ[k] for k in _INPUT_ENV if os.environ.get(k)}}
    mirror.bucket.fs.pipe_file(mirror.key("places.json"), json.dumps(places, indent=2).encode())


def _input_files(path: Path) -> list[Path]:
    """A file, or a folder's files but a dataset's own cache (index, thumbnails, journal)."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and META not in p.relative_to(path).parts)


def _output_dir(spec: dict[str, Any]) -> str | None:
    return spec["params"]["config"]["save"].get("output_dir") if spec["kind"] == "train" else None


def _inputs(spec: dict[str, Any], ws: Workspace) -> list[Path]:
    """The local files and folders a job reads: a train job's base model parts, adapter and
    datasets; a caption job's dataset and model files."""
    params = spec["params"]
    if spec["kind"] == "caption":
        from ..captioning.llama import model_paths

        files = [] if params["server"] else model_paths(params["model"], params["mmproj"], ws)
        return [dataset_path(params["dataset"], ws), *(p.resolve() for p in files)]
    cfg = params["config"]
    named = [cfg["model"].get(k) for k in ("base", "vae", "config", "adapter")]
    paths = [Path(p) for p in named if isinstance(p, str) and p.startswith("/") and Path(p).exists()]
    for section in ("dataset", "validation"):
        source = (cfg.get(section) or {}).get("source")
        if isinstance(source, str) and source:
            paths.append(Path(source) if "/" in source else ws.datasets / source)
    return list(dict.fromkeys(p.resolve() for p in paths))


# -- the worker, on a Ray node ----------------------------------------------------------------
def run_from_bucket(url: str, resume: bool) -> int:
    """Run the job whose folder is at ``url`` in a scratch workspace on this node: download it
    and its inputs, run it as a child process while pushing what changes, push the end. The
    scratch stays for a resume until the job succeeds."""
    parsed = within(url, configured_url())  # refused before anything is read or written
    mirror, env = _download(open_bucket(), parsed)
    job_dir = mirror.folder
    job = JobRecord(job_dir)
    if job.spec()["kind"] == "caption":  # it captions this node's copy: the captions go back too
        ds = bucket_captions.dataset_of(job.spec(), job.workspace)
        bucket_captions.restore(job_dir, ds)
        mirror.extra = bucket_captions.worker_files(ds)
        ds.index.close()
    cmd = [sys.executable, "-m", "lora_lab.jobs", str(job_dir), "--slots", "0"] + (["--resume"] if resume else [])
    with open(job_dir / "log.txt", "ab") as log:
        # it dies with this process (a SIGKILL after the stop's grace period)
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 preexec_fn=_die_with_parent,
                                 env={**os.environ, **env, "PYTHONUNBUFFERED": "1", ENV_JOB_URL: url})
    # Ray's stop signals every process of the job, the child too: this one keeps pushing until
    # the child has ended (or Ray's SIGKILL ends both)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asked = False
    while child.poll() is None:
        time.sleep(POLL_S)
        with contextlib.suppress(OSError, ValueError):
            mirror.push()
            if not asked and _cancel_seen(mirror):  # a cancel: the child's Ctrl-C, exactly once
                asked = True
                os.kill(child.pid, signal.SIGINT)
    mirror.push(final=True)
    if json.loads((job_dir / "status.json").read_text(encoding="utf-8"))["state"] == "succeeded":
        shutil.rmtree(scratch_root(job_dir.name), ignore_errors=True)  # the staged inputs too
    return child.returncode if child.returncode >= 0 else 128 - child.returncode  # by a signal


def _cancel_seen(mirror: Mirror) -> bool:
    """Whether a cancel was asked for in the bucket; if so, the job reads it as asked for here."""
    if not mirror.bucket.fs.exists(mirror.key("cancel-requested")):
        return False
    atomic.write_text(mirror.folder / "cancel-requested", f"{time.time()}\n")
    return True


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def scratch_root(job_id: str) -> Path:
    """The worker's workspace for the job: the same path on every node, so a checkpoint's
    settings (which name paths) match when another node resumes it."""
    return Path(tempfile.gettempdir()) / "lora-lab-jobs" / job_id


def _download(bucket: Bucket, url: BucketURL) -> tuple[Mirror, dict[str, str]]:
    """The job folder and its inputs in a fresh scratch workspace: the mirror that pushes back,
    and the environment that names inputs, in this node's paths."""
    job_id = url.prefix.rsplit("/", 1)[-1]
    root = scratch_root(job_id)
    mirror = Mirror(bucket, url, root / "ws" / "jobs" / job_id)
    listing = mirror.listing()
    if "spec.json" not in listing:
        raise LoraLabError(f"no job folder at {url} (no spec.json there)")
    places = json.loads(bucket.fs.cat_file(mirror.key("places.json")))
    pairs = [(places["root"], str(root / "ws")), *_fetch_inputs(bucket, places, root)]
    pairs += [(out, str(root / "outputs" / str(n))) for n, out in enumerate(places["outputs"])]
    mirror.places = Places(pairs)
    shutil.rmtree(mirror.folder, ignore_errors=True)  # what an earlier run here left
    mirror.folder.mkdir(parents=True)
    for rel in listing:
        if _mirrored(rel) and not rel.startswith("outputs/"):
            target = mirror.folder / rel
            if rel in _TRANSLATED:
                atomic.write_text(target, mirror.places.there(bucket.fs.cat_file(mirror.key(rel)).decode()))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                bucket.fs.get_file(mirror.key(rel), str(target))
            mirror.sent[rel] = (target.stat().st_size, target.stat().st_mtime_ns, time.monotonic())
    events = _remote_events(mirror, listing)
    (mirror.folder / "events.jsonl").write_text(mirror.places.there("".join(events)), encoding="utf-8")
    mirror.remote_events = len(events)
    return mirror, {k: mirror.places.there(v) for k, v in places.get("env", {}).items()}


def _fetch_inputs(bucket: Bucket, places: dict[str, Any], root: Path,
                  only: Collection[str] | None = None) -> list[tuple[str, str]]:
    """The inputs ``places`` lists (``only``: those at these paths), in place under the scratch
    ``root``: (here, there) pairs."""
    pairs = []
    for entry in places["inputs"]:
        here = Path(entry["path"])
        there = root / "ws" / here.relative_to(places["root"]) if here.is_relative_to(places["root"]) \
            else root / "inputs" / Path(entry["key"]).name / here.name
        if only is None or str(there) in only:
            _fetch_input(bucket, entry["key"], there, entry["dir"])
        pairs.append((entry["path"], str(there)))
    return pairs


def _fetch_input(bucket: Bucket, key: str, there: Path, is_dir: bool) -> None:
    """An input in place on this node; what an earlier run put there with the same sizes stays."""
    found = bucket.fs.find(key, detail=True)
    for name, info in found.items():
        rel = name[len(key):].lstrip("/")
        target = there / rel if is_dir else there
        if target.is_file() and target.stat().st_size == int(info["size"]):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp"
        bucket.fs.get_file(name, str(tmp))
        os.replace(tmp, target)


# -- the other nodes of a run on several of them (Ray Train's ranks) ---------------------------
ENV_JOB_URL = "LORA_LAB_JOB_FOLDER_URL"  # set for the job the worker runs: its folder's URL


def stage_inputs(url: str, only: Collection[str] | None = None) -> Path:
    """The inputs of the job whose folder is at ``url`` (not the folder: rank 0 alone writes it,
    on the worker's node) in this node's scratch workspace, at the paths the worker gave them on
    its own node (``only``: those of these paths); files already there with the same sizes
    stay. The scratch root."""
    bucket = open_bucket()
    parsed = within(url, configured_url())
    root = scratch_root(parsed.prefix.rsplit("/", 1)[-1])
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".staging.lock", "w") as lock:  # one download for the ranks on this node
        fcntl.flock(lock, fcntl.LOCK_EX)
        places = json.loads(bucket.fs.cat_file(f"{parsed.bucket}/{parsed.key('places.json')}"))
        _fetch_inputs(bucket, places, root, only)
    return root


def on_any_node(make: Callable[[], T], inputs: Iterable[Path]) -> Callable[[], T]:
    """``make``, to run in a Ray actor of the job this process runs: with its folder in the
    bucket, an actor on a node without ``inputs`` (a caption model) stages them first, with the
    bucket's settings this process has."""
    url = os.environ.get(ENV_JOB_URL)
    return functools.partial(_staged, url, worker_env(), [str(p) for p in inputs], make) if url else make


def _staged(url: str, env: dict[str, str], inputs: list[str], make: Callable[[], T]) -> T:
    if not all(Path(p).exists() for p in inputs):  # another node than the job's
        os.environ.update(env)
        stage_inputs(url, inputs)
    return make()
