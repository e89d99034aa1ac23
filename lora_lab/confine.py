"""Confinement: what a request from another machine may make this one read, write or call.

The CLI and the panels act for the person at the keyboard, who may name any file. A REST client
may not: every path in what it submits is resolved inside the workspace (or, for ingest, inside
the folders the server's admin lists and the Jupyter root, whose files the same user's file
browser shows anyway), and the caption API key goes only to the servers the admin allows. These
checks run before a job record exists or a byte is read; they return the request with every
path made absolute, so the job reads exactly what was checked.
"""
from __future__ import annotations

import os
import posixpath
import re
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import LoraLabError, NotFound
from .workspace import Workspace, check_name

# A Hugging Face Hub repo id ("org/name"): the Hub's own rule, so no path can pass for one
HUB_ID = re.compile(r"(?!.*(?:--|\.\.))[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
                    r"/[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?", re.ASCII)


def inside(ws: Workspace, value: str, what: str, base: Path | None = None) -> Path:
    """``value`` (relative to ``base``, default the root) resolved inside the workspace, or
    refused; so is a home folder (``~``), which is the server's, not the client's."""
    if value.startswith("~"):
        raise LoraLabError(f"{what}: {value!r} names a home folder; name a path inside the "
                           f"workspace {ws.root} (relative to it) instead")
    if "\x00" in value:
        raise LoraLabError(f"{what}: {value!r} contains a NUL byte, which no path can")
    try:
        return ws.resolve(value, base)
    except LoraLabError:
        raise LoraLabError(f"{what}: {value!r} is outside the workspace {ws.root}; a request to "
                           "the server may only name paths inside it") from None


def existing(ws: Workspace, value: str, what: str) -> Path:
    """Like :func:`inside`, and the path must exist (else 404, naming it)."""
    path = inside(ws, value, what)
    if not _exists(path):
        raise NotFound(f"{what}: {value!r} does not exist in the workspace {ws.root}")
    return path


def model_ref(ws: Workspace, value: str, what: str) -> str:
    """A model named by path (checked, made absolute) or by Hub id (kept as it is)."""
    if not value or (HUB_ID.fullmatch(value) and not _exists(ws.root / value, links=True)):
        return value
    return str(existing(ws, value, what))


def train_config(config: dict[str, Any], ws: Workspace) -> dict[str, Any]:
    """A submitted training config with every path in it inside the workspace: model.base,
    model.vae, model.config, model.adapter, dataset.source (when not a dataset name), save.output_dir.
    Fields of the wrong type are left for the config's own validation to report."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    model, data, save = (out.get(k) if isinstance(out.get(k), dict) else {}
                         for k in ("model", "dataset", "save"))
    for key in ("base", "vae", "config", "adapter"):
        if isinstance(model.get(key), str):
            model[key] = model_ref(ws, model[key], f"model.{key}")
    if isinstance(data.get("source"), str) and data["source"]:
        data["source"] = _train_source(ws, data["source"])
    if isinstance(save.get("output_dir"), str) and save["output_dir"]:
        save["output_dir"] = str(inside(ws, save["output_dir"], "save.output_dir"))
    return out


def _train_source(ws: Workspace, source: str) -> str:
    """A dataset name stays a name (it must exist); anything else is a folder in the workspace
    (a bare name is a folder when the workspace root holds one: the job kind reads it so)."""
    if "/" in source or source.startswith((".", "~")) or _exists(ws.root / source):
        return str(existing(ws, source, "dataset.source"))
    try:
        is_dataset = _exists(ws.datasets / check_name(source))
    except LoraLabError:  # not even a possible dataset name
        is_dataset = False
    if not is_dataset:
        raise NotFound(f"dataset.source: {source!r} is neither a dataset in {ws.datasets} nor a "
                       "folder in the workspace")
    return source


def caption_job(params: dict[str, Any], ws: Workspace, servers: Iterable[str]) -> dict[str, Any]:
    """A submitted caption job's params with its model files inside the workspace and each of
    its caption servers one the admin allows."""
    out = dict(params)
    for key in ("model", "mmproj"):
        if isinstance(out.get(key), str) and out[key]:
            out[key] = str(existing(ws, out[key], f"caption parameter {key}"))
    named = out.get("server")  # one URL or a list; other shapes: the job's own check refuses them
    for url in [named] if isinstance(named, str) else named if isinstance(named, list) else []:
        if isinstance(url, str) and url:
            check_caption_server(url, servers)
    return out


def job_params(kind: str, params: Any, ws: Workspace, servers: Iterable[str]) -> Any:
    """``params`` of a job of ``kind`` confined as above; other shapes pass on unchanged, for
    the job kind's own check to refuse with its own message."""
    if kind == "train" and isinstance(params, dict) and isinstance(params.get("config"), dict):
        return {**params, "config": train_config(params["config"], ws)}
    if kind == "caption" and isinstance(params, dict):
        return caption_job(params, ws, servers)
    return params


# -- caption servers --------------------------------------------------------------------------------
def server_prefix(prefix: str) -> str:
    """An allowed-server entry checked: ``http(s)://host[:port][/path]``, nothing else."""
    parts = urllib.parse.urlsplit(prefix.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise LoraLabError(f"allowed caption server {prefix!r} must be a URL like "
                           "http://127.0.0.1:8080 or https://host/v1")
    return prefix.strip()


def caption_server_allowed(url: str, servers: Iterable[str]) -> bool:
    """Whether ``url`` is on one of the ``servers`` (same scheme, host and port, and under its
    path, segment by segment: ``http://a:80`` does not allow ``http://a:8080`` or ``http://a:80.evil``)."""
    u = urllib.parse.urlsplit(url.strip())
    if u.scheme not in ("http", "https") or {".", ".."} & set(u.path.split("/")):
        return False
    for prefix in servers:
        p = urllib.parse.urlsplit(prefix.strip())
        base = posixpath.normpath(p.path or "/").rstrip("/")
        if ((u.scheme, u.netloc.lower()) == (p.scheme, p.netloc.lower())
                and (u.path.rstrip("/") == base or u.path.startswith(base + "/"))):
            return True
    return False


def check_caption_server(url: str, servers: Iterable[str]) -> None:
    servers = list(servers)
    if not caption_server_allowed(url, servers):
        listed = ", ".join(servers) if servers else "none are"
        raise LoraLabError(f"caption server {url!r} is not allowed here (allowed: {listed}); the "
                           "server's admin lists caption servers in LoraLabApp.allowed_caption_"
                           "servers or $LORA_LAB_ALLOWED_CAPTION_SERVERS")


# -- ingest ----------------------------------------------------------------------------------------
def ingest_source(source: str, ws: Workspace, roots: Iterable[Path],
                  contents_root: Path | None = None) -> Path:
    """A zip or folder to ingest: inside the workspace, inside one of the ``roots`` the admin
    listed, or inside the Jupyter server's ``contents_root`` (its file browser already shows that
    tree to the same user); symlinks are followed before the check. A relative path is the
    workspace's, else (when the workspace has nothing by that name) the contents root's: the
    folder a file browser shows."""
    if not source or "\x00" in source or source.startswith("~"):
        raise LoraLabError(f"source {source!r}: name a zip or folder inside the workspace")
    target = (ws.root / source).resolve()
    if contents_root is not None and not _exists(target):
        target = (contents_root / source).resolve()
    allowed = [*roots, *([contents_root] if contents_root is not None else [])]
    if target == ws.root or target in ws.root.parents:
        raise LoraLabError("source: the workspace itself (or a folder holding it) cannot be "
                           "ingested; name a folder or zip inside it")
    if not any(target == r or r in target.parents for r in (ws.root, *allowed)):
        listed = ", ".join(map(str, allowed)) if allowed else "none are set"
        raise LoraLabError(f"source {source!r} is outside the workspace {ws.root}, the Jupyter "
                           f"root and the ingest roots ({listed}); copy it into the workspace, "
                           "or have the server's admin list its folder in LoraLabApp.ingest_roots")
    if not _exists(target):
        raise NotFound(f"source {source!r} does not exist")
    return target


# -- the Jupyter contents root ----------------------------------------------------------------------
def contents_path(path: Path | None, root: Path | None) -> str | None:
    """``path`` as JupyterLab's file browser names it: relative to the server's root, in posix
    form ("" for the root itself); None when it lies outside (the browser cannot show it)."""
    if path is None or root is None:
        return None
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        return None
    return "" if rel == Path() else rel.as_posix()


def _exists(path: Path, links: bool = False) -> bool:
    """Whether ``path`` exists (or, with ``links``, is a link); a name too long for the file
    system, or otherwise unusable, does not exist (instead of raising)."""
    try:
        os.stat(path) if not links else os.lstat(path)
    except (OSError, ValueError):
        return False
    return True
