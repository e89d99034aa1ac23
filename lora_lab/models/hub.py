"""The Hugging Face Hub as a pull sees it, through huggingface_hub: which files a request takes
(with their sizes and hashes), where each one downloads from, and every failure of the Hub
turned into one line that says what to do.

The environment is read when a pull starts (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` or
the token ``hf auth login`` saved), so a server or kernel started before it changed sees the
change too.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ..errors import LoraLabError, NotFound

TOKEN_HINT = ("set HF_TOKEN to a read token from https://huggingface.co/settings/tokens "
              "(or run `hf auth login`, formerly `huggingface-cli login`)")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # in the repo
    local: str  # in the model's folder (a variant file loses its ".fp16")
    size: int | None
    sha256: str | None  # LFS files; small ones carry their git blob id instead
    blob_id: str | None


@dataclass(frozen=True)
class RepoFiles:
    repo: str
    revision: str  # the commit every file is taken from
    files: list[RemoteFile]


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    from huggingface_hub import constants

    raw = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.is_offline_mode() or raw.strip().upper() in ("1", "ON", "YES", "TRUE")


def check_online(what: str) -> None:
    if offline():
        raise LoraLabError(f"cannot pull {what}: HF_HUB_OFFLINE is set, so the Hub may not be "
                           "reached; unset it (or pull on a machine that is online and copy "
                           "the folder into the workspace's models/)")


def token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def repo_files(repo: str, include: tuple[str, ...], exclude: tuple[str, ...] = (),
               variant: str = "") -> RepoFiles:
    """The files of ``repo`` that ``include`` selects (all without it), ``exclude`` drops, at
    its current commit. Refused with a message when the Hub cannot be reached, the repo is
    missing or gated without a token, or nothing matches."""
    from huggingface_hub import HfApi

    with hub_errors(repo):
        info = HfApi(endpoint=endpoint()).model_info(repo, files_metadata=True, token=token())
    if info.gated and not token():
        raise LoraLabError(gated_message(repo, has_token=False))
    siblings = {s.rfilename: s for s in info.siblings or []}
    chosen = _select(sorted(siblings), include, exclude, variant)
    if not chosen:
        raise NotFound(_nothing_matches(repo, include, sorted(siblings)))
    files = []
    for path, local in chosen:
        s = siblings[path]
        files.append(RemoteFile(path, local, s.size if s.lfs is None else s.lfs.size,
                                s.lfs.sha256 if s.lfs else None, s.blob_id))
    return RepoFiles(repo, info.sha or "main", files)


def _select(paths: list[str], include: tuple[str, ...], exclude: tuple[str, ...],
            variant: str) -> list[tuple[str, str]]:
    """(repo path, local path) of each file taken. With a variant, ``X.VARIANT.safetensors``
    replaces ``X.safetensors`` and is saved under that plain name."""
    def matches(path: str, globs: tuple[str, ...]) -> bool:  # a file named exactly, or a glob
        return any(path == g or fnmatch.fnmatchcase(path, g) for g in globs)

    taken = [p for p in paths if (not include or matches(p, include)) and not matches(p, exclude)]
    if not variant:
        return [(p, p) for p in taken]
    tag = f".{variant}.safetensors"
    plain_of = {p: p[: -len(tag)] + ".safetensors" for p in taken if p.endswith(tag)}
    replaced = set(plain_of.values())
    return [(p, plain_of.get(p, p)) for p in taken if p not in replaced]


def _nothing_matches(repo: str, include: tuple[str, ...], paths: list[str]) -> str:
    if len(include) == 1 and "*" not in include[0]:  # one file asked for by name
        import difflib

        close = difflib.get_close_matches(include[0], paths, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"{repo} has no file {include[0]!r}{hint}"
    shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
    return f"no file of {repo} matches {', '.join(include)} (it has {shown or 'no files'})"


@dataclass(frozen=True)
class Download:
    url: str  # where the bytes are (the Hub's CDN for large files)
    headers: dict[str, str]
    size: int | None


def locate(repo: str, revision: str, path: str) -> Download:
    """Where ``path`` downloads from, as the Hub's resolve URL answers a HEAD request."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.utils import build_hf_headers

    # the Hub's resolve URL, built here: hf_hub_url fills a template read at import time
    url = f"{endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"
    with hub_errors(repo):
        meta = get_hf_file_metadata(url, token=token())
    headers = build_hf_headers(token=token())
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL: the token stays with the Hub
    return Download(meta.location, headers, meta.size)


@contextlib.contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """huggingface_hub's and the network's exceptions as one-line messages."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise LoraLabError(gated_message(repo, has_token=token() is not None)) from None
    except RepositoryNotFoundError:
        hint = "" if token() else f"; if it is private, {TOKEN_HINT}"
        raise NotFound(f"no model {repo} on the Hub ({endpoint()}): check the name{hint}") from None
    except RemoteEntryNotFoundError as e:
        raise NotFound(f"{repo}: a file is missing on the Hub ({_first_line(e)})") from None
    except OfflineModeIsEnabled:
        raise LoraLabError(f"cannot pull {repo}: HF_HUB_OFFLINE is set; unset it to reach the "
                           "Hub") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise LoraLabError(f"the Hub ({endpoint()}) refused {repo} with HTTP {status} "
                           f"({_first_line(e)}); try again later") from None
    except httpx2.TransportError as e:
        raise LoraLabError(f"cannot reach the Hub at {endpoint()} ({type(e).__name__}: {e}); "
                           "check the network, or set HF_ENDPOINT to a mirror") from None


def gated_message(repo: str, has_token: bool) -> str:
    page = f"https://huggingface.co/{repo}"
    if has_token:
        return (f"{repo} is gated and your token has no access to it yet: accept its licence at "
                f"{page} (logged in as the token's owner), then pull again")
    return f"{repo} is gated: accept its licence at {page}, then {TOKEN_HINT}, and pull again"


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(e).__name__
