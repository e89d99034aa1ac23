"""The one place that knows how to reach a Ray cluster: start and stop a head on this box, find
its dashboard, and read its nodes and free resources.

Ray is an optional extra (``lora_lab[ray]``), so nothing here imports it at module level:
:func:`require_ray` does, for the code that submits jobs. The cluster's state is read from the
dashboard's HTTP API with urllib; ``ray.init`` would take seconds and spawn processes.
The head runs without Ray's token authentication (``RAY_AUTH_MODE=disabled``), like every Ray
cluster started with ``ray start`` and no token: the pods must share a private network.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from .atomic import write_text
from .errors import LoraLabError, Unavailable
from .workspace import Workspace

ADDRESS_ENV = "LORA_LAB_RAY_ADDRESS"
CLUSTER_FILE = "cluster.json"  # in the workspace root, written by `lora-lab cluster start`
PIP_LINE = "pip install 'lora_lab[ray]'"
# what the head and what it starts run with: no usage reports (offline pods), and no token
# auth, which a token file left by an earlier local ray.init() would otherwise switch on
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
START_TIMEOUT_S = 90  # `ray start`, and then the dashboard listing the head: 4-30 s on 2 busy cores
STOP_GRACE_S = 15  # as `ray stop`: SIGTERM, then SIGKILL whatever is left


def require_ray(what: str = "this") -> ModuleType:
    """The ``ray`` module, or a one-line error: ``what`` needs Ray, and how to install it."""
    try:
        import ray
    except ImportError:
        raise LoraLabError(f"{what} needs Ray: {PIP_LINE}") from None
    return ray


def ray_installed() -> bool:
    """Whether Ray can be imported, without importing it (that takes seconds)."""
    return importlib.util.find_spec("ray") is not None


# -- where the dashboard is ----------------------------------------------------------------------
def dashboard_url(workspace: Workspace) -> str:
    """The Ray Jobs API URL: ``$LORA_LAB_RAY_ADDRESS``, else the head that ``lora-lab cluster
    start`` recorded in the workspace's cluster.json."""
    given = os.environ.get(ADDRESS_ENV, "").strip()
    if given:
        return parse_dashboard_url(given)
    recorded = read_cluster_file(workspace)
    if recorded is None:
        raise Unavailable(f"no Ray cluster configured: run `lora-lab cluster start` on the head "
                           f"box, or set {ADDRESS_ENV} to its dashboard URL (http://HOST:8265)")
    return str(recorded["dashboard"])


def parse_dashboard_url(text: str) -> str:
    """``http(s)://HOST[:PORT]`` as given (less a final slash); a bare ``HOST:PORT`` gets http://."""
    url = text if "://" in text else f"http://{text}"
    wrong = (f"{ADDRESS_ENV}={text!r} is not a Ray dashboard URL: give http://HOST:PORT "
             "(the dashboard's port, 8265 by default)")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise LoraLabError(wrong) from None
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment
            or parts.username or (port is None and "://" not in text)):
        raise LoraLabError(wrong)
    return url.rstrip("/")


def cluster_file(workspace: Workspace) -> Path:
    return workspace.root / CLUSTER_FILE


def read_cluster_file(workspace: Workspace) -> dict[str, Any] | None:
    """What ``cluster start`` recorded, or None when there is no cluster.json."""
    path = cluster_file(workspace)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise Unavailable(f"{path} is unreadable ({e}): remove it, then `lora-lab cluster "
                           "start` again") from None
    if not isinstance(data, dict) or not isinstance(data.get("dashboard"), str):
        raise Unavailable(f"{path} names no dashboard: remove it, then `lora-lab cluster start` again")
    return data


# -- what the cluster has ------------------------------------------------------------------------
def cluster_resources(url: str, timeout: float = 5) -> dict[str, Any]:
    """The cluster's GPUs and CPUs (total and free) and its nodes, from the dashboard at ``url``.

    Each node: ip, hostname, head, gpus, gpus_free, gpu_names, cpus, cpus_free, memory_free and
    memory_total (bytes), alive. A dead node is listed with nothing counted for it."""
    status = _get_json(url, "/api/cluster_status", timeout)
    summary = _get_json(url, "/nodes?view=summary", timeout)
    try:
        nodes = [_node(entry, _usage_by_node(status)) for entry in summary["data"]["summary"]]
    except (KeyError, TypeError, AttributeError):
        raise Unavailable(f"{url} answers, but not as a Ray dashboard does: is it the head's "
                           "dashboard port (8265 by default)?") from None
    totals = {key: sum(n[key] for n in nodes) for key in ("gpus", "gpus_free", "cpus", "cpus_free")}
    return {**totals, "nodes": sorted(nodes, key=lambda n: (not n["alive"], n["ip"]))}


def _usage_by_node(status: Any) -> dict[str, Any]:
    """``[used, total]`` per resource per node id; nothing yet while the autoscaler starts."""
    report = ((status.get("data") or {}).get("clusterStatus") or {}).get("loadMetricsReport") or {}
    return report.get("usageByNode") or {}


def _node(entry: dict[str, Any], by_node: dict[str, Any]) -> dict[str, Any]:
    """One node of /nodes?view=summary: its totals as its raylet registered them, less what the
    load report (``[used, total]`` per resource, a second or two behind) says is in use."""
    raylet = entry.get("raylet") or {}
    alive = raylet.get("state") == "ALIVE"
    total = (raylet.get("resourcesTotal") or {}) if alive else {}
    used = by_node.get(raylet.get("nodeId")) or {}
    gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
    mem = entry.get("mem") or [0, 0]  # psutil's order: total, available, percent, used
    return {"ip": entry.get("ip") or raylet.get("nodeManagerAddress", ""),
            "hostname": entry.get("hostname", ""), "head": bool(raylet.get("isHeadNode")),
            "gpus": gpus, "gpus_free": gpus - int(used.get("GPU", [0])[0]),
            "gpu_names": [g.get("name", "") for g in entry.get("gpus") or [] if isinstance(g, dict)],
            "cpus": cpus, "cpus_free": cpus - int(used.get("CPU", [0])[0]),
            "memory_free": int(mem[1]) if alive else 0, "memory_total": int(mem[0]), "alive": alive}


def _get_json(url: str, path: str, timeout: float) -> Any:
    """GET ``url + path`` as JSON, failing fast with one line. Proxies are bypassed: the head is
    on the pods' private network."""
    import urllib.error  # with http.client and ssl, 15 ms: not for every `lora-lab` command
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + path, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise Unavailable(f"the Ray head at {url} asks for a token (Ray's token "
                               "authentication): start it with `lora-lab cluster start`, or "
                               "with RAY_AUTH_MODE=disabled") from None
        raise Unavailable(f"{url} answers HTTP {e.code} to {path}: it is not a Ray dashboard "
                           "(the head's dashboard port is 8265 by default)") from None
    except ValueError:
        raise Unavailable(f"{url} answers {path} with something other than JSON: it is not a "
                           "Ray dashboard") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise Unavailable(f"the Ray head at {url} is unreachable ({why}): start it with `lora-lab "
                           f"cluster start`, or fix {ADDRESS_ENV}") from None


# -- starting and stopping a head on this box ----------------------------------------------------
def start_head(workspace: Workspace, *, port: int = 6379, dashboard_port: int = 8265,
               num_cpus: int | None = None, num_gpus: int | None = None,
               node_ip: str | None = None, temp_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Start a Ray head on this box (``ray start --head``), wait for its dashboard to answer, and
    record it in the workspace's cluster.json.

    The dashboard listens on ``node_ip``: by default this box's address that other pods reach
    (127.0.0.1 keeps it to this box). The head's processes get this interpreter's bin folder first
    on PATH, so a Ray job's ``python -m lora_lab.jobs`` runs this lora_lab. A head recorded in
    cluster.json that still answers, or a port already taken, is refused before anything starts.
    Returns what cluster.json holds, with ``join``: the line each other box runs."""
    ray = _ray_command()
    for flag, value in (("--port", port), ("--dashboard-port", dashboard_port)):
        if not 0 < value < 65536:
            raise LoraLabError(f"{flag} must be a port number (1-65535), not {value}")
    for flag, value in (("--num-cpus", num_cpus), ("--num-gpus", num_gpus)):
        if value is not None and value < 0:
            raise LoraLabError(f"{flag} must be 0 or more, not {value}")
    _refuse_running_head(workspace)
    ip = node_ip or reachable_ip()
    for flag, value in (("--port", port), ("--dashboard-port", dashboard_port)):
        if _port_taken(value):
            raise LoraLabError(f"port {value} is taken on this box (a Ray head already running? "
                               f"see `ray status`): choose another with {flag}")
    command = [str(ray), "start", "--head", f"--node-ip-address={ip}", f"--port={port}",
               "--include-dashboard=true", f"--dashboard-host={ip}", f"--dashboard-port={dashboard_port}",
               # free ports, not Ray's fixed defaults (10001, 52365): two heads may share a box
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               "--disable-usage-stats", "--log-color=false"]
    command += [f"--num-cpus={num_cpus}"] * (num_cpus is not None)
    command += [f"--num-gpus={num_gpus}"] * (num_gpus is not None)
    command += [f"--temp-dir={Path(temp_dir).resolve()}"] * (temp_dir is not None)
    url = f"http://{_url_host(ip)}:{dashboard_port}"
    pgid, head = _run_head(command, url)
    address = f"{_url_host(head['ip'])}:{port}"
    record = {"address": address, "dashboard": url, "node_ip": ip, "host": socket.gethostname(),
              "pgid": pgid, "session_dir": head["session_dir"],
              "started": datetime.now(UTC).isoformat(timespec="seconds"),
              "join": join_line(address)}
    write_text(cluster_file(workspace), json.dumps(record, indent=2) + "\n")
    return record


def _run_head(command: list[str], url: str) -> tuple[int, dict[str, str]]:
    """Run ``ray start`` in a session of its own (every head process lands in its process group,
    which stop_head ends) and wait for the dashboard to list the head. On a failure nothing of
    it is left running. Ray gives the raylet 30 s to register, which an overloaded box can miss:
    that failure is tried once more."""
    for _ in range(2):
        started = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=head_env(), start_new_session=True)
        try:
            out, _ = started.communicate(timeout=START_TIMEOUT_S)
            if started.returncode == 0:
                return started.pid, _wait_for_head(url)
        except BaseException:
            _end_group(started.pid)
            raise
        _end_group(started.pid)
        if "timed out during startup" not in out:
            break
    raise LoraLabError(f"ray start failed: {_last_error(out)}")


def stop_head(workspace: Workspace) -> dict[str, Any]:
    """Stop the head that ``cluster start`` started on this box, and remove cluster.json.

    Only that head's processes are stopped (its process group, checked against the session it
    recorded), not other Ray processes on the box: ``ray stop`` stops every Ray process on this
    box, other heads and a joined worker included. A head that is no longer running (a restarted
    pod) is forgotten. Returns the record with ``stopped``: how many processes were ended."""
    record = read_cluster_file(workspace)
    if record is None:
        raise LoraLabError(f"no head started here: {cluster_file(workspace)} does not exist (a "
                           "head started otherwise stops with `ray stop`, which stops every Ray "
                           "process on its box)")
    if record.get("host") != socket.gethostname():
        raise LoraLabError(f"the head runs on {record.get('host')!r}, not on this box "
                           f"({socket.gethostname()!r}): run `lora-lab cluster stop` there")
    group = _group(int(record.get("pgid", 0)))
    session = str(record.get("session_dir", ""))
    ours = bool(session) and any(session in cmdline for cmdline in group.values())
    stopped = _end_group(int(record["pgid"])) if ours else 0
    cluster_file(workspace).unlink(missing_ok=True)
    return {**record, "stopped": stopped}


def join_line(address: str) -> str:
    """The shell line another box runs to join: this environment's ray, its bin folder first on
    PATH (so jobs there run ``python`` from the same environment)."""
    bin_dir = shlex.quote(str(Path(sys.executable).parent))
    return f'PATH={bin_dir}:"$PATH" {bin_dir}/ray start --address={address}'


def head_env() -> dict[str, str]:
    """This process's environment for the head: Ray's settings pinned, this interpreter's bin
    folder first on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **RAY_ENV, "PATH": path}


def reachable_ip() -> str:
    """This box's address that other boxes reach: the source address of its default route, as
    Ray finds it (a UDP connect sends nothing), else the host name's address, else 127.0.0.1."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("8.8.8.8", 53))
        return str(s.getsockname()[0])
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _ray_command() -> Path:
    ray = Path(sys.executable).parent / "ray"
    if not ray_installed() or not ray.is_file():
        raise LoraLabError(f"`lora-lab cluster start` needs Ray: {PIP_LINE} (into {sys.prefix})")
    return ray


def _refuse_running_head(workspace: Workspace) -> None:
    """Refuse to start while the head cluster.json records still answers (a stale record, of a
    restarted pod, is replaced)."""
    record = read_cluster_file(workspace)
    if record is None:
        return
    try:
        cluster_resources(record["dashboard"], timeout=2)
    except LoraLabError:
        return
    raise LoraLabError(f"a Ray head is running already: {record['dashboard']}, started "
                       f"{record.get('started')} on {record.get('host')} (`lora-lab cluster status` "
                       "shows it, `lora-lab cluster stop` stops it)")


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is free
        try:
            s.bind(("", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE  # anything else (a privileged port) is Ray's to say
    return False


def _url_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _wait_for_head(url: str) -> dict[str, str]:
    """The head node's address and session folder, once the dashboard lists it alive and the
    load report counts it (so the first `cluster status` shows what it holds)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            summary = _get_json(url, "/nodes?view=summary", timeout=5)["data"]["summary"]
            reported = _usage_by_node(_get_json(url, "/api/cluster_status", timeout=5))
            for entry in summary:
                raylet = entry.get("raylet") or {}
                if (raylet.get("isHeadNode") and raylet.get("state") == "ALIVE"
                        and raylet.get("nodeId") in reported):
                    return {"ip": entry["ip"], "session_dir": raylet["sessionDir"]}
        except (LoraLabError, KeyError, TypeError, AttributeError):
            pass
        if time.monotonic() > deadline:
            raise LoraLabError(f"the Ray head started, but its dashboard at {url} did not list it "
                               f"within {START_TIMEOUT_S} s: see the logs under its --temp-dir "
                               "(/tmp/ray by default)")
        time.sleep(0.5)


def _last_error(output: str) -> str:
    """The line of ``ray start``'s output that says what went wrong: the last one naming an
    error, else the last one."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "exception" in line.lower():
            return line
    return lines[-1] if lines else "no output"


def _group(pgid: int) -> dict[int, str]:
    """The processes of process group ``pgid`` and their command lines (Linux: /proc)."""
    if not os.path.isdir("/proc"):
        raise LoraLabError("`lora-lab cluster stop` finds the head's processes in /proc (Linux); "
                           "here, stop it with `ray stop`, which stops every Ray process on this box")
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        with contextlib.suppress(OSError):
            if pgid > 0 and os.getpgid(pid) == pgid:
                found[pid] = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
    return found


def _end_group(pgid: int) -> int:
    """End process group ``pgid`` as ``ray stop`` ends Ray's processes: the raylet first (it
    takes its workers along), then the rest but the GCS, then the GCS; each SIGTERM, then
    SIGKILL after its share of the grace period. Returns how many processes there were."""
    group = _group(pgid)
    program = {pid: cmd.split(" ", 1)[0] for pid, cmd in group.items()}
    raylets = [pid for pid, path in program.items() if path.endswith("/raylet")]
    gcs = [pid for pid, path in program.items() if path.endswith("/gcs_server")]
    rest = [pid for pid in group if pid not in raylets and pid not in gcs]
    for bucket in (raylets, rest, gcs):
        _terminate(bucket, STOP_GRACE_S / 3)
    return len(group)


def _terminate(pids: list[int], grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.1)
        if not pids:
            return


def _alive(pid: int) -> bool:
    """Still running (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
