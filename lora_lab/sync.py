"""Datasets and LoRA files to and from the bucket: ``lora-lab sync push|pull|ls``.

    <bucket>/datasets/NAME/   the images, their .txt captions, .lora_lab/caption_sources.jsonl
    <bucket>/loras/FILE       LoRA files
    .../.lora_lab/sync.json   beside them: each object's size, sha256 and the ETag it had

Only what differs is sent. The sha256 is the content's identity: it is recorded at push time
next to the object's ETag, which is kept only to notice an object changed by another tool (an
ETag is an MD5 for single-part uploads only, not for multipart ones as large LoRAs are). An
object the record does not vouch for is compared by MD5 where its ETag is one, else counted as
different. Pushes only read local files; pulls write each file to a temp name and rename it into
place after checking its sha256, and refuse, listing them, to replace local files that differ
from the bucket's unless ``force``. Neither side deletes anything.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .bucket import Bucket
from .datasets.dataset import META, Dataset
from .datasets.images import EXTENSIONS
from .errors import Conflict, LoraLabError, NotFound
from .workspace import Workspace, check_name

RECORD = f"{META}/sync.json"
SOURCES = f"{META}/caption_sources.jsonl"  # which model wrote each caption: not in the .txt files
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_SHOWN = 5  # conflicting files named in the message


def push_dataset(bucket: Bucket, name: str, workspace: Workspace | None = None) -> dict[str, Any]:
    """Send dataset ``name``'s images, captions and caption sources that the bucket lacks."""
    ds = Dataset.open(name, workspace)  # refuses a missing dataset; brings the index in step
    try:
        with ds.writing():  # a consistent snapshot: caption writers wait for the push
            files = _dataset_files(ds.path)
            known = {r["file"]: r for r in ds.index.all()}  # images' sha256, already computed
            hashes = {rel: _indexed_sha(p, known.get(rel)) or _sha256(p) for rel, p in files.items()}
            result = _push(bucket, f"datasets/{ds.name}", files, hashes)
    finally:
        ds.index.close()
    return {"kind": "dataset", "name": ds.name, **result}


def pull_dataset(bucket: Bucket, name: str, workspace: Workspace | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Fetch dataset ``name`` into the workspace (new, or brought in step with the bucket)."""
    ws = workspace or Workspace()
    base = f"datasets/{check_name(name)}"
    objects, record = _remote(bucket, base)
    objects = {rel: o for rel, o in objects.items() if _dataset_member(rel)}
    if not objects:
        raise NotFound(f"dataset {name!r} is not in the bucket ({bucket.url}/{base}); "
                       "see `lora-lab sync ls`")
    path = ws.resolve(name, ws.datasets)
    if path.exists() and not path.is_dir():
        raise Conflict(f"{path} is a file, not a dataset folder; move it away first")
    fresh = not path.exists()
    path.mkdir(exist_ok=True)
    ds = Dataset(path)
    try:
        with ds.writing():
            result = _pull(bucket, base, objects, record, path, force)
            ds.sync()
    except BaseException:
        ds.index.close()
        if fresh:  # refused or failed: a dataset that was not here is not left half-made
            shutil.rmtree(path, ignore_errors=True)
        raise
    ds.index.close()
    return {"kind": "dataset", "name": name, **result}


def push_lora(bucket: Bucket, file: str | os.PathLike) -> dict[str, Any]:
    """Send one LoRA file to ``<bucket>/loras/`` under its own name, if it differs there."""
    path = Path(file)
    if path.suffix != ".safetensors":
        raise LoraLabError(f"{path.name} is not a .safetensors file; give a LoRA file")
    if not path.is_file():
        raise NotFound(f"LoRA file {str(path)!r} does not exist")
    result = _push(bucket, "loras", {path.name: path}, {path.name: _sha256(path)})
    return {"kind": "lora", "name": path.name, **result}


def pull_lora(bucket: Bucket, name: str, workspace: Workspace | None = None,
              force: bool = False) -> dict[str, Any]:
    """Fetch LoRA file ``name`` from ``<bucket>/loras/`` into the workspace's ``loras/``."""
    ws = workspace or Workspace()
    if not name or name != Path(name).name or name.startswith(".") or not name.endswith(".safetensors"):
        raise LoraLabError(f"invalid LoRA name {name!r}: give a .safetensors file name as `sync ls` shows it")
    objects, record = _remote(bucket, "loras")
    if name not in objects:
        raise NotFound(f"LoRA {name!r} is not in the bucket ({bucket.url}/loras); see `lora-lab sync ls`")
    result = _pull(bucket, "loras", {name: objects[name]}, record, ws.loras, force)
    return {"kind": "lora", "name": name, "path": str(ws.loras / name), **result}


def bucket_listing(bucket: Bucket) -> dict[str, Any]:
    """The datasets (files, bytes) and LoRA files (bytes) the bucket holds."""
    datasets: dict[str, dict[str, int]] = {}
    loras = []
    for rel, obj in _list(bucket, "").items():
        parts = rel.split("/")
        if parts[0] == "datasets" and len(parts) > 2 and _dataset_member("/".join(parts[2:])):
            d = datasets.setdefault(parts[1], {"files": 0, "bytes": 0})
            d["files"] += 1
            d["bytes"] += obj["size"]
        elif parts[0] == "loras" and len(parts) == 2 and not parts[1].startswith("."):
            loras.append({"name": parts[1], "bytes": obj["size"]})
    return {"url": str(bucket.url),
            "datasets": [{"name": n, **d} for n, d in sorted(datasets.items())], "loras": loras}


# -- both directions -----------------------------------------------------------------------------
def _push(bucket: Bucket, base: str, files: dict[str, Path], hashes: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    objects, record = _remote(bucket, base)
    send = [rel for rel, p in files.items()
            if not _same_content(p, hashes[rel], objects.get(rel), record.get(rel))]
    if send:
        with _transfer("the push", "run it again to send the rest"):
            bucket.fs.put([str(files[r]) for r in send], [bucket.path(base, r) for r in send])
        objects = _list(bucket, base)  # the new objects' ETags, for the record
    for rel, sha in hashes.items():
        if rel in objects:
            record[rel] = {"size": objects[rel]["size"], "sha256": sha, "etag": objects[rel]["etag"]}
    record = {rel: r for rel, r in record.items() if rel in objects}
    with _transfer("the push", "run it again"):
        bucket.fs.pipe_file(bucket.path(base, RECORD), json.dumps({"version": 1, "files": record}).encode())
    return {"url": f"{bucket.url}/{base}", "sent": len(send), "skipped": len(files) - len(send),
            "bytes": sum(files[r].stat().st_size for r in send), "files": sorted(send),
            "seconds": round(time.monotonic() - started, 3)}


def _pull(bucket: Bucket, base: str, objects: dict[str, dict[str, Any]], record: dict[str, Any],
          dest: Path, force: bool) -> dict[str, Any]:
    started = time.monotonic()
    fetch, conflicts = [], []
    for rel, obj in sorted(objects.items()):
        target = dest / rel
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise Conflict(f"{target} is not a plain file; move it away before pulling")
        if not target.exists():
            fetch.append(rel)
        elif not _same_content(target, None, obj, record.get(rel)):
            fetch.append(rel)
            conflicts.append(rel)
    if conflicts and not force:
        shown = ", ".join(conflicts[:_SHOWN]) + (" ..." if len(conflicts) > _SHOWN else "")
        raise Conflict(f"{len(conflicts)} local file(s) differ from the bucket's and would be replaced "
                       f"({shown}); nothing was pulled: push them first, or pull with --force")
    _download(bucket, base, fetch, objects, record, dest)
    return {"url": f"{bucket.url}/{base}", "received": len(fetch), "skipped": len(objects) - len(fetch),
            "replaced": len(conflicts), "bytes": sum(objects[r]["size"] for r in fetch),
            "files": fetch, "seconds": round(time.monotonic() - started, 3)}


def _download(bucket: Bucket, base: str, rels: list[str], objects: dict[str, dict[str, Any]],
              record: dict[str, Any], dest: Path) -> None:
    """Fetch each object to a temp file beside its target, check it, then rename them all in."""
    temps = {rel: (dest / rel).parent / f".{Path(rel).name}.{secrets.token_hex(4)}.tmp" for rel in rels}
    try:
        for t in temps.values():
            t.parent.mkdir(parents=True, exist_ok=True)
        if rels:
            with _transfer("the pull", "nothing was written; run it again"):
                bucket.fs.get([bucket.path(base, r) for r in rels], [str(temps[r]) for r in rels])
        for rel, tmp in temps.items():
            known = _vouched(objects[rel], record.get(rel))
            if known and _sha256(tmp) != known:
                raise LoraLabError(f"{rel} changed in the bucket while it was pulled (sha256 differs "
                                   "from the record); pull again")
        for rel, tmp in temps.items():
            os.replace(tmp, dest / rel)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _transfer(what: str, after: str) -> Iterator[None]:
    """A network or store failure mid-transfer as one line (s3fs has retried it already)."""
    from botocore.exceptions import BotoCoreError

    try:
        yield
    except (OSError, BotoCoreError) as e:
        raise LoraLabError(f"{what} stopped: {e}; {after}") from None


# -- what is where -------------------------------------------------------------------------------
def _list(bucket: Bucket, base: str) -> dict[str, dict[str, Any]]:
    """Every object under ``base``: relative key -> size and ETag (unquoted)."""
    root = bucket.path(base)
    bucket.fs.invalidate_cache(root)
    with _transfer("listing the bucket", "run it again"):
        try:
            found = bucket.fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
    return {name[len(root):].lstrip("/"): {"size": int(info["size"]), "etag": info.get("ETag", "").strip('"')}
            for name, info in found.items() if info.get("type") != "directory"}


def _remote(bucket: Bucket, base: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The objects under ``base`` (its record left out) and the record's entries."""
    objects = _list(bucket, base)
    record: dict[str, Any] = {}
    if RECORD in objects:
        try:
            record = json.loads(bucket.fs.cat_file(bucket.path(base, RECORD)))["files"]
        except (ValueError, KeyError, TypeError):
            record = {}  # unreadable: every object is compared by its ETag alone
        del objects[RECORD]
    return objects, record


def _vouched(obj: dict[str, Any] | None, entry: dict[str, Any] | None) -> str | None:
    """The object's sha256, when the record was written for exactly this object."""
    if obj and isinstance(entry, dict) and entry.get("etag") == obj["etag"] and entry.get("size") == obj["size"]:
        return entry.get("sha256")
    return None


def _same_content(path: Path, sha: str | None, obj: dict[str, Any] | None, entry: dict[str, Any] | None) -> bool:
    """Whether local ``path`` (its sha256, when known) holds what the object holds."""
    if obj is None or path.stat().st_size != obj["size"]:
        return False
    known = _vouched(obj, entry)
    if known:
        return (sha or _sha256(path)) == known
    return bool(_MD5.fullmatch(obj["etag"])) and _digest(path, "md5") == obj["etag"]


def _dataset_files(root: Path) -> dict[str, Path]:
    """A dataset's own files: images and .txt captions (plain files, not links), and the
    caption sources; the index, thumbnails and undo journal are rebuilt or local."""
    files = {e.name: Path(e.path) for e in os.scandir(root)
             if _dataset_member(e.name) and e.is_file(follow_symlinks=False)}
    if (root / SOURCES).is_file():
        files[SOURCES] = root / SOURCES
    return files


def _dataset_member(rel: str) -> bool:
    """Whether ``rel`` (from the bucket, so not trusted) names a file a dataset keeps there."""
    if rel == SOURCES:
        return True
    suffix = Path(rel).suffix.lower()
    return "/" not in rel and "\\" not in rel and not rel.startswith(".") and (
        suffix in EXTENSIONS or suffix == ".txt")


def _indexed_sha(path: Path, row: dict[str, Any] | None) -> str | None:
    if row is None:
        return None
    st = path.stat()
    return row["sha256"] if (row["mtime_ns"], row["bytes"]) == (st.st_mtime_ns, st.st_size) else None


def _sha256(path: Path) -> str:
    return _digest(path, "sha256")


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
