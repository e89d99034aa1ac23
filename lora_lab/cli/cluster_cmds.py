"""``lora-lab cluster start | status | stop``: a Ray cluster for jobs beyond this box."""
from __future__ import annotations

import argparse
from typing import Any

from .. import cluster
from .output import add_json_flag, emit, workspace

GB = 10**9


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cluster", help="a Ray cluster: start a head here, see its nodes, stop it",
                       description="Run jobs on other pods: `cluster start` makes this box a Ray "
                                   "head and prints the line each other box runs to join; `cluster "
                                   "status` lists the nodes with their GPUs and memory. Needs "
                                   "pip install 'lora_lab[ray]'.")
    verbs = c.add_subparsers(title="cluster commands", metavar="VERB", required=True)

    s = verbs.add_parser("start", help="start a Ray head on this box; print the join line",
                         description="Start a Ray head on this box (`ray start --head`), wait for "
                                     "its dashboard, record it in the workspace's cluster.json "
                                     "and print the line that joins another box to it. Refused "
                                     "while the head recorded there still answers.")
    s.add_argument("--port", type=int, default=6379, help="the head's port (GCS; default 6379)")
    s.add_argument("--dashboard-port", type=int, default=8265,
                   help="the dashboard's port, which serves the Jobs API (default 8265)")
    s.add_argument("--num-cpus", type=int, help="CPUs this node offers (default: Ray counts them)")
    s.add_argument("--num-gpus", type=int, help="GPUs this node offers (default: Ray counts them)")
    s.add_argument("--node-ip", metavar="IP",
                   help="this box's address on the pods' network (default: its default route's; "
                        "127.0.0.1 keeps the dashboard to this box)")
    s.add_argument("--temp-dir", metavar="DIR", help="Ray's temporary folder (default /tmp/ray; "
                                                     "keep it short: socket paths live in it)")
    add_json_flag(s)
    s.set_defaults(run=cmd_start)

    s = verbs.add_parser("status", help="the cluster's nodes, their GPUs and free memory",
                         description="The nodes of the cluster at $LORA_LAB_RAY_ADDRESS, or of the "
                                     "head `cluster start` recorded: each one's GPUs and CPUs "
                                     "(free of total) and memory. Exit 1 when unreachable.")
    add_json_flag(s)
    s.set_defaults(run=cmd_status)

    s = verbs.add_parser("stop", help="stop the head `cluster start` started on this box",
                         description="Stop the head `cluster start` started on this box (its "
                                     "processes only, not other Ray processes) and forget it. "
                                     "On a box that joined, `ray stop` leaves the cluster.")
    add_json_flag(s)
    s.set_defaults(run=cmd_stop)


def cmd_start(args: argparse.Namespace) -> None:
    record = cluster.start_head(workspace(args), port=args.port, dashboard_port=args.dashboard_port,
                                num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                                node_ip=args.node_ip, temp_dir=args.temp_dir)
    text = "\n".join([
        f"Ray head started at {record['address']}; dashboard and Jobs API: {record['dashboard']}",
        "On each other box, in the same lora_lab environment (the same Python and lora_lab, job",
        "folders on a volume every box mounts at the same path), run:",
        f"  {record['join']}",
        "then: lora-lab cluster status"])
    emit(args, record, text)


def cmd_status(args: argparse.Namespace) -> None:
    url = cluster.dashboard_url(workspace(args))
    found = cluster.cluster_resources(url)
    emit(args, {"dashboard": url, **found}, status_table(url, found))


def status_table(url: str, found: dict[str, Any]) -> str:
    alive = [n for n in found["nodes"] if n["alive"]]
    lines = [f"{url}: {len(alive)} node(s), {found['gpus_free']} of {found['gpus']} GPU(s) free, "
             f"{found['cpus_free']} of {found['cpus']} CPU(s) free"]
    rows = [("node", "host", "GPUs free", "CPUs free", "memory free", "")]
    for n in found["nodes"]:
        names = ", ".join(sorted(set(n["gpu_names"])))
        rows.append((n["ip"] + (" (head)" if n["head"] else ""), n["hostname"],
                     f"{n['gpus_free']}/{n['gpus']}", f"{n['cpus_free']}/{n['cpus']}",
                     f"{n['memory_free'] / GB:.1f}/{n['memory_total'] / GB:.1f} GB",
                     names if n["alive"] else "dead"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines += ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[5]]).rstrip()
              for row in rows]
    return "\n".join(lines)


def cmd_stop(args: argparse.Namespace) -> None:
    record = cluster.stop_head(workspace(args))
    text = (f"stopped the Ray head at {record['address']} ({record['stopped']} processes)"
            if record["stopped"] else
            f"the Ray head at {record['address']} was not running (a restarted box?): forgotten")
    emit(args, record, text)
