"""How a kernel finds the Jupyter server that serves its workspace, to link to files for download.

A panel runs in a kernel, which knows neither the URL the browser reached JupyterLab at nor
whether a server serves its files at all. The server extension says so when it loads: it sets
two environment variables, which the kernels, terminals and jobs that server starts inherit.
A kernel started some other way (papermill from a shell, VS Code, a plain Python) or working in
another workspace gets no link, and the panels show the path alone.

Links go to the lora_lab REST API (``jobs/ID/files/NAME``), not to Jupyter's ``/files/``: a
LoRA in the workspace downloads even when the workspace lies outside the Jupyter root.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from .errors import LoraLabError
from .workspace import Workspace

API_ENV = "LORA_LAB_SERVER_API"  # the REST API's URL path, e.g. /user/me/lora-lab/api/
WORKSPACE_ENV = "LORA_LAB_SERVER_WORKSPACE"  # the workspace that server's extension serves


def export_server(api_path: str, workspace: Workspace) -> None:
    """Tell the processes this one starts from now on where its lora_lab API is."""
    os.environ[API_ENV] = api_path.rstrip("/") + "/"
    os.environ[WORKSPACE_ENV] = str(workspace.root)


def server_api(workspace: Workspace) -> str | None:
    """The lora_lab API's URL path when a Jupyter server serving ``workspace`` started this
    process; None otherwise."""
    api, served = os.environ.get(API_ENV), os.environ.get(WORKSPACE_ENV)
    if not api or not served:
        return None
    try:
        same = Path(served).resolve() == workspace.root.resolve()
    except (OSError, RuntimeError):
        return None
    return api if same else None


def job_file_url(workspace: Workspace, job_id: str, path: str | os.PathLike) -> str | None:
    """Where the browser downloads one of a job's LoRA files (``path``), or None: no server
    serves this workspace, or the file lies outside it."""
    api = server_api(workspace)
    if api is None:
        return None
    try:
        workspace.resolve(path)
    except LoraLabError:
        return None
    return f"{api}jobs/{quote(job_id, safe='')}/files/{quote(Path(path).name, safe='')}"
