"""A model pull against a plain curl of the same file from the same local Hub.

    .venv/bin/python bench/bench_models.py                      # a 200 MB file, best of 5 (~30 s)
    .venv/bin/python bench/bench_models.py --mb 50 --repeats 3  # quick

The Hub is tests/hub_server.py in a process of its own (huggingface_hub's routes, the file sent
with sendfile from the page cache); the pull runs in this process through the CLI
(`lora-lab models pull ORG/NAME --json`): the repo listing, the HEAD of the file, the download
through huggingface_hub's HTTP session, the sha256 of every byte, the move into place and the
folder's record. Floor: `curl -L -o FILE` of the file's resolve URL (the 302 to the CDN followed,
as the pull does), which neither lists, hashes nor records. Each run starts from an empty
workspace; curl and the pull alternate, and the best of each is compared.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from benchlib import Row, Target, print_machine, print_table, timed, warm

TARGET = Target(ratio=1.2)  # the issue: within 1.2x of the server's throughput as curl sees it
REPO, FILE = "bench/model", "model.safetensors"
HUB_SERVER = Path(__file__).resolve().parent.parent / "tests" / "hub_server.py"


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if shutil.which("curl") is None:
        sys.exit("bench_models.py needs curl (the floor)")
    print_machine()
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        root = Path(tmp)
        source = _model_file(root / "repo" / FILE, args.mb)
        warm([source])
        server = subprocess.Popen([sys.executable, str(HUB_SERVER), REPO, str(root / "repo")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            endpoint = server.stdout.readline().strip()
            os.environ["HF_ENDPOINT"] = endpoint
            os.environ.pop("HF_HUB_OFFLINE", None)  # the Hub here is the local one
            rows = _measure(root, endpoint, args)
        finally:
            server.stdin.close()
            server.wait(timeout=30)
    print_table(f"a {args.mb} MB file pulled from a local Hub, best of {args.repeats}",
                "curl -L -o FILE of the same resolve URL", rows)


def _measure(root: Path, endpoint: str, args: argparse.Namespace) -> list[Row]:
    from lora_lab.cli import main as lora_lab

    url = f"{endpoint}/{REPO}/resolve/main/{FILE}"
    out, ws = root / "curl.bin", root / "ws"
    curl, pulled = [], []
    for _ in range(args.repeats):  # alternating, so both meet the same moments of a busy machine
        out.unlink(missing_ok=True)
        curl.append(timed(lambda: subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)))
        shutil.rmtree(ws, ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()):
            pulled.append(timed(lambda: lora_lab(["--workspace", str(ws), "models", "pull", REPO, "--json"])))
        if not (ws / "models" / "model" / FILE).is_file():
            raise SystemExit("the pull failed")
    mb = args.mb * 2**20 / 1e6
    return [Row(f"lora-lab models pull ({mb / min(pulled):.0f} MB/s; curl {mb / min(curl):.0f} MB/s)",
                min(pulled), min(curl), TARGET)]


def _model_file(path: Path, mb: int) -> Path:
    """``mb`` MiB that do not compress (a model's weights), the same bytes every run."""
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(rng.integers(0, 256, 2**20, dtype=np.uint8).tobytes())
    return path


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="the file's size in MiB")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each")
    args = parser.parse_args(argv)
    if min(args.mb, args.repeats) < 1:
        parser.error("--mb and --repeats must be at least 1")
    return args


if __name__ == "__main__":
    main()
