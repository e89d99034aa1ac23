"""`lora-lab lora push`: a LoRA file, its model card and images to a Hub repo, in one commit.

Every check that can refuse comes before anything is sent: the repo id, the file (a LoRA), the
token and the Hub itself (huggingface_hub's ``whoami`` against ``HF_ENDPOINT``). Then the repo is
created if missing and everything goes in as a single commit, so a failure midway leaves the
repo as it was. ``dry_run`` writes the card, the images and the list of files a push would
upload into a folder, and sends nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import LoraLabError
from ..models.hub import endpoint, offline
from ..workspace import Workspace
from .model_card import model_card

TOKEN_HINT = ("set HF_TOKEN to a write token from https://huggingface.co/settings/tokens "
              "(or run `hf auth login`)")
FILE_LIST = "upload.json"  # what a dry run writes beside the card: the files a push would send


def push_lora(path: str | os.PathLike, repo_id: str, *, private: bool = False,
              dry_run: str | os.PathLike | None = None,
              workspace: Workspace | None = None) -> dict[str, Any]:
    """Upload the LoRA at ``path`` with its model card to the model repo ``repo_id`` (ORG/NAME,
    or NAME in the token owner's namespace); with ``dry_run`` a folder, write there instead."""
    from ..training.lora_file import describe_lora

    lora = Path(path)
    check_repo_id(repo_id)
    if lora.suffix != ".safetensors":
        raise LoraLabError(f"{lora.name} is not a .safetensors file: LoRAs go to the Hub as "
                           "safetensors only (the UIs and diffusers list those)")
    out = _free_folder(Path(dry_run)) if dry_run is not None else None
    described = describe_lora(lora)  # refuses a file that is not a LoRA
    if out is not None:
        return _write_dry_run(out, repo_id, private, _files(lora, repo_id, described, workspace))
    api, repo_id = _hub_session(repo_id)  # a bare NAME gets the token owner's namespace
    return _upload(api, repo_id, private, _files(lora, repo_id, described, workspace))


def _files(lora: Path, repo_id: str, described: dict[str, Any],
           workspace: Workspace | None) -> dict[str, bytes | Path]:
    """What goes up, by path in the repo: the LoRA (from disk), its card and the card's images."""
    card = model_card(lora, repo_id, workspace, described)
    return {lora.name: lora, "README.md": card.readme.encode(), **card.images}


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
        ok = repo_id.count("/") <= 1
    except HFValidationError:
        ok = False
    if not ok:
        raise LoraLabError(f"{repo_id!r} is not a Hub repo id: use ORG/NAME (or NAME, in your own "
                           "namespace) with letters, digits, '-', '_' and '.', at most 96 characters")


def _free_folder(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LoraLabError(f"{out} already exists and is not an empty folder: name a new one for "
                           "the dry run's card and file list")
    return out


def _write_dry_run(out: Path, repo_id: str, private: bool, files: dict[str, bytes | Path]) -> dict[str, Any]:
    """The card, images and file list in ``out``, all or nothing: written in a hidden folder
    beside it, renamed into place when complete. The LoRA itself is listed, not copied."""
    listing = _listing(files)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        for name, content in files.items():
            if isinstance(content, bytes):
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                atomic.write_bytes(staging / name, content)
        result = {"repo": repo_id, "private": private, "dry_run": True, "files": listing}
        atomic.write_text(staging / FILE_LIST, json.dumps(result, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, as checked: the complete folder takes its place
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**result, "out": str(out)}


def _listing(files: dict[str, bytes | Path]) -> list[dict[str, Any]]:
    """Each file as the commit names it, with its size, sha256 and where it comes from."""
    listing = []
    for name, content in files.items():
        digest = hashlib.sha256()
        if isinstance(content, bytes):
            digest.update(content)
            size, source = len(content), "generated"
        else:
            with open(content, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            size, source = content.stat().st_size, str(content)
        listing.append({"path": name, "bytes": size, "sha256": digest.hexdigest(), "source": source})
    return listing


def _hub_session(repo_id: str) -> tuple[Any, str]:
    """huggingface_hub's client for the Hub, once its token is known to be taken there, and
    the full repo id."""
    from huggingface_hub import HfApi, get_token

    if offline():
        raise LoraLabError("cannot push: HF_HUB_OFFLINE is set, so the Hub may not be reached; "
                           "unset it, or use --dry-run --out DIR to write the card locally")
    token = get_token()
    if not token:
        raise LoraLabError(f"cannot push: no Hugging Face token; {TOKEN_HINT}")
    api = HfApi(endpoint=endpoint(), token=token)
    with hub_errors(repo_id):
        user = api.whoami()
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise LoraLabError(f"cannot push: the token of {user.get('name')} is read-only; {TOKEN_HINT}")
    return api, repo_id if "/" in repo_id else f"{user['name']}/{repo_id}"


def _upload(api: Any, repo_id: str, private: bool, files: dict[str, bytes | Path]) -> dict[str, Any]:
    """The repo created if missing, then every file in one commit."""
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(name, content if isinstance(content, bytes) else str(content))
                  for name, content in files.items()]
    lora = next(name for name, content in files.items() if isinstance(content, Path))
    with hub_errors(repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(repo_id, operations, commit_message=f"Upload {lora} with lora-lab",
                                   repo_type="model")
    return {"repo": repo_id, "url": f"{endpoint()}/{repo_id}", "commit": commit.oid,
            "private": private, "dry_run": False, "files": list(files)}


@contextlib.contextmanager
def hub_errors(repo_id: str) -> Iterator[None]:
    """huggingface_hub's and the network's exceptions as one-line messages."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    where = endpoint()
    try:
        yield
    except OfflineModeIsEnabled:
        raise LoraLabError("cannot push: HF_HUB_OFFLINE is set; unset it to reach the Hub") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise LoraLabError(f"the Hub ({where}) does not accept the token (HTTP 401); "
                               f"{TOKEN_HINT}") from None
        if status == 403:
            raise LoraLabError(f"the token may not write to {repo_id} on the Hub ({where}, HTTP 403): "
                               "push to your own namespace, or use a token with write access "
                               "to that organisation") from None
        raise LoraLabError(f"the Hub ({where}) refused the push to {repo_id} with HTTP "
                           f"{status or '?'} ({_first_line(e)}); nothing was committed") from None
    except httpx2.TransportError as e:
        raise LoraLabError(f"cannot reach the Hub at {where} ({type(e).__name__}: {e}); check the "
                           "network, or HF_ENDPOINT; nothing was committed") from None
    except ValueError as e:  # huggingface_hub's own checks, e.g. the card's YAML refused
        raise LoraLabError(f"the Hub ({where}) refused the push to {repo_id}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    lines = [line.strip(" -") for line in str(e).splitlines() if line.strip()]
    return "; ".join(lines[:3])[:300] if lines else type(e).__name__
