"""Captioning benchmarks: lora_lab's batch against a bare create_chat_completion loop, the
OpenAI-compatible engine with 4 requests in flight against sequential requests, and that engine
on two servers against one.

    .venv/bin/python bench/bench_caption.py            # 64 images, best of 3 (~5 min on 2 idle cores)
    .venv/bin/python bench/bench_caption.py --quick    # 16 images, 1 run (~40 s)
    .venv/bin/python bench/bench_caption.py --model M.gguf --mmproj P.gguf   # real files

Everything (model pair, images, workspace) lives in one temp folder that is removed at the end.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import Row, Target, cpu_busy, own_cpu, print_machine, print_table, warm
from PIL import Image, ImageDraw

from lora_lab.captioning import prompts
from lora_lab.captioning.base import MAX_CAPTION_PIXELS, data_uri, prepare_image, retry_tokens
from lora_lab.captioning.batch import CaptionSettings, caption_dataset
from lora_lab.datasets import Dataset, ingest
from lora_lab.workspace import Workspace

SECTIONS = ("llama", "openai", "servers")
LLAMA_TARGET = Target(ratio=1.10)
OPENAI_TARGET = Target(ratio=1.0)  # faster than sequential
SERVERS_TARGET = Target(ratio=1 / 1.8)  # two servers at least 1.8x as fast as one
# A stand-in server's pace in the servers section: slow enough that preparing the images
# (~28 ms each on one core) keeps ahead of two servers' 2 x IN_FLIGHT slots.
SERVERS_LATENCY_S = 1.0
IN_FLIGHT = 4
# Photo-like sizes up to ~2 MP, landscape and portrait: 1.0-1.9 MP are decoded in full and
# resized to the 0.5 MP cap; 1920x1080 is decoded at half scale (JPEG draft) and re-encoded.
SIZES = [(1024, 1024), (1600, 1200), (1200, 1600), (1920, 1080), (1280, 960)]
# A run during which other processes used more than this many cores is retried (up to TRIES
# times); before each run we wait up to QUIET_WAIT_S for them to calm down. On a shared 2-core
# box one busy neighbour slows llama.cpp several times over (its threads spin-wait on each other).
DISTURBED_CORES = 0.25
TRIES = 3
QUIET_WAIT_S = 60.0
# What LlamaCaptioner passes to llama.cpp unless told otherwise (see its constructor).
N_CTX, TEMPERATURE, SEED = 4096, 0.2, 0


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        root = Path(tmp)
        made = timed_s(lambda: generate_photos(root / "src", args.images))
        ws = Workspace(root / "workspace")
        ingest(root / "src", "bench-caption", workspace=ws)
        ds = Dataset.open("bench-caption", ws)
        if len(ds) != args.images:
            raise SystemExit(f"dataset holds {len(ds)} images, expected {args.images}")
        files = ds.select()
        paths = [ds.image_path(f) for f in files]
        warm(paths)
        mp = sum(_pixels(p) for p in paths) / len(paths) / 1e6
        print(f"# {len(paths)} JPEGs, {mp:.2f} MP on average (sizes {_sizes()}), made in {made:.1f} s")
        template = prompts.resolve_prompt()  # the default preset, as `lora-lab caption` uses
        settings = CaptionSettings(template, mode="overwrite", style=prompts.caption_style())
        if "llama" in args.only:
            bench_llama(args, root, ds, files, paths, settings)
        if "openai" in args.only:
            bench_openai(args, ds, settings)
        if "servers" in args.only:
            bench_servers(args, ds, settings)


# -- local engine: lora_lab against a bare loop ----------------------------------------------------
def bench_llama(args: argparse.Namespace, root: Path, ds: Dataset, files: list[str],
                paths: list[Path], settings: CaptionSettings) -> None:
    from lora_lab.captioning.llama import LlamaCaptioner

    if args.model:
        model, mmproj = Path(args.model), Path(args.mmproj)
    else:
        from lora_lab.tiny.gguf_models import write_caption_pair

        model, mmproj = write_caption_pair(root / "caption")
    # Loaded first: it routes llama.cpp's logging through Python logging for the whole process,
    # so both paths pay the same for llama.cpp's log lines.
    captioner = LlamaCaptioner(model, mmproj, max_tokens=args.max_tokens, temperature=TEMPERATURE,
                               seed=SEED, n_ctx=N_CTX)
    llm = bare_llama(model, mmproj)
    probes = {"bare": Probe(), "lora_lab": Probe()}
    # The same thin wrapper on both: lora_lab returns neither token counts nor timings.
    captioner._llm.create_chat_completion = probes["lora_lab"].wrap(captioner._llm.create_chat_completion)
    llm.create_chat_completion = probes["bare"].wrap(llm.create_chat_completion)
    writes = Probe()
    ds.write_caption = writes.wrap(ds.write_caption)  # how long lora_lab's stores take
    prompt = prompts.render_prompt(settings.prompt, trigger=settings.trigger)
    out_dir = root / "bare-captions"
    out_dir.mkdir()
    # An untimed first caption, as LlamaCaptioner makes one when it loads.
    _complete(llm, prepare_image(paths[0]), prompt, args.max_tokens)

    def probed(name: str, fn: Callable[[], None]) -> Callable[[], dict[str, float]]:
        def go() -> dict[str, float]:
            probes[name].reset()
            writes.reset()
            start = time.perf_counter()
            fn()
            total = time.perf_counter() - start
            model_s, between_s = probes[name].split(total, len(paths))
            return {"model_s": model_s, "between_s": between_s, "writes_s": writes.mean_s(),
                    "tokens": sum(probes[name].tokens) / len(paths)}
        return go

    def lora() -> None:
        report = caption_dataset(ds, captioner, settings)
        if report.captioned != len(files):
            raise SystemExit(f"caption_dataset captioned {report.captioned} of {len(files)} "
                             f"images; failed: {report.failed[:3]}")

    runs = alternate({"bare": probed("bare", lambda: bare_loop(llm, paths, prompt, args.max_tokens,
                                                                out_dir)),
                      "lora_lab": probed("lora_lab", lora)}, args.repeats)
    captioner.close()
    llm.close()
    n = len(paths)
    best = {k: best_run(v) for k, v in runs.items()}
    bare, lora_run = best["bare"], best["lora_lab"]
    model_desc = f"{model.name} + {mmproj.name}" if args.model else "the tiny Qwen2.5-VL GGUF pair"
    print_table(
        f"caption {n} images with {model_desc}, max_tokens={args.max_tokens}, "
        f"best of {args.repeats} undisturbed runs (order alternated)",
        "a bare serial loop: prepare_image (decode, downscale to "
        f"{MAX_CAPTION_PIXELS / 2**20:g} MP, JPEG) + data URI + create_chat_completion (asked "
        "again at double the limit when max_tokens cut the answer, as lora_lab does) + write the "
        ".txt, per image, on its own Llama with LlamaCaptioner's settings",
        [Row("lora_lab caption_dataset(LlamaCaptioner)", lora_run.seconds, bare.seconds,
             LLAMA_TARGET)])
    print(f"images/s: bare {n / bare.seconds:.2f}, lora_lab {n / lora_run.seconds:.2f}; tokens "
          f"generated per image (mean): bare {bare.info['tokens']:.1f}, "
          f"lora_lab {lora_run.info['tokens']:.1f}")
    print(f"per image, in create_chat_completion: bare {bare.info['model_s'] * 1000:.1f} ms, "
          f"lora_lab {lora_run.info['model_s'] * 1000:.1f} ms; between calls: bare "
          f"{bare.info['between_s'] * 1000:.1f} ms, lora_lab {lora_run.info['between_s'] * 1000:.1f} ms "
          f"(of which writing the caption: {lora_run.info['writes_s'] * 1000:.1f} ms)")
    print(f"prepare_image alone (decode, resize, JPEG): {prep_ms(paths):.1f} ms per image on one core")
    print_runs(runs)


def bare_llama(model: Path, mmproj: Path):
    """A Llama loaded as a user's script would, with the settings LlamaCaptioner uses."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Qwen25VLChatHandler

    gpu = llama_cpp.llama_supports_gpu_offload()
    chat = Qwen25VLChatHandler(clip_model_path=str(mmproj), verbose=False)
    return llama_cpp.Llama(model_path=str(model), chat_handler=chat, n_ctx=N_CTX,
                           n_gpu_layers=-1 if gpu else 0, seed=SEED, verbose=False)


def bare_loop(llm, paths: list[Path], prompt: str, max_tokens: int, out_dir: Path) -> None:
    """The floor: one image after the other, nothing overlapped, nothing journaled or indexed.

    It prepares images with lora_lab's own ``prepare_image`` so both send the model the same
    bytes (and so the same image tokens); a hand-written Pillow resize without JPEG draft
    decoding would only make the floor slower.
    """
    for path in paths:
        jpeg = prepare_image(path)
        text, reason = _complete(llm, jpeg, prompt, max_tokens)
        if reason == "length":  # a cut caption is asked again, so both do the same model work
            text, _ = _complete(llm, jpeg, prompt, retry_tokens(max_tokens))
        (out_dir / f"{path.stem}.txt").write_text(text, encoding="utf-8")


def _complete(llm, jpeg: bytes, prompt: str, max_tokens: int) -> tuple[str, str | None]:
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(jpeg)}},
        {"type": "text", "text": prompt},
    ]}]
    out = llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                     temperature=TEMPERATURE, seed=SEED)
    return out["choices"][0]["message"]["content"] or "", out["choices"][0]["finish_reason"]


class Probe:
    """Wraps a Llama's create_chat_completion: per call, the tokens it generated and when it
    ran, so a run splits into time in the model and time between calls (the pipeline's part)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.spans: list[tuple[float, float]] = []

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def probed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if kwargs.get("max_tokens", 2) > 1:  # not LlamaCaptioner's 1-token warm-up
                self.spans.append((start, time.perf_counter()))
                if isinstance(out, dict) and "usage" in out:
                    self.tokens.append(out["usage"]["completion_tokens"])
            return out
        return probed

    def reset(self) -> None:
        self.tokens.clear()
        self.spans.clear()

    def mean_s(self) -> float:
        return statistics.fmean(end - start for start, end in self.spans) if self.spans else 0.0

    def split(self, total: float, images: int) -> tuple[float, float]:
        """(time in the model, the rest) of a run of ``images`` that took ``total`` seconds,
        per image (an image whose answer was cut takes two calls)."""
        model = sum(end - start for start, end in self.spans)
        return model / images, (total - model) / images


def prep_ms(paths: list[Path]) -> float:
    start = time.perf_counter()
    for p in paths:
        prepare_image(p)
    return (time.perf_counter() - start) / len(paths) * 1000


# -- OpenAI-compatible engine: 4 in flight against sequential --------------------------------------
class FakeServer(ThreadingHTTPServer):
    """Answers like llama-server: ``GET /v1/models`` and ``POST /v1/chat/completions``.

    Each completion does real work (base64- and JPEG-decodes the image it was sent), then waits
    ``latency`` seconds, as a GPU server with a free parallel slot would; requests are served
    on their own threads, so this measures the client's concurrency, not a model.
    """
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, latency: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.latency = latency
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.answered = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "bench-vlm", "object": "model"}]})

    def do_POST(self) -> None:
        server = self.server
        with server.lock:
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            url = body["messages"][0]["content"][0]["image_url"]["url"]
            with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
                im.load()
                size = im.size
            time.sleep(server.latency)
        finally:
            with server.lock:
                server.in_flight -= 1
                server.answered += 1
        self._send({"object": "chat.completion", "model": "bench-vlm", "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant",
                        "content": f"A photo of {size[0]}x{size[1]} pixels of a gradient with shapes."}}],
            "usage": {"prompt_tokens": 700, "completion_tokens": 16, "total_tokens": 716}})

    def _send(self, reply: dict) -> None:
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def bench_openai(args: argparse.Namespace, ds: Dataset, settings: CaptionSettings) -> None:
    from lora_lab.captioning.openai_server import OpenAIServerCaptioner

    server = FakeServer(args.server_latency)
    threading.Thread(target=server.serve_forever, daemon=True, name="bench-server").start()
    try:
        engines = {n: OpenAIServerCaptioner(server.url, concurrency=n, max_tokens=args.max_tokens,
                                            temperature=TEMPERATURE) for n in (1, IN_FLIGHT)}

        def run(n: int) -> Callable[[], int]:
            def go() -> int:
                server.max_in_flight = 0
                report = caption_dataset(ds, engines[n], settings)
                if report.captioned != len(ds):
                    raise SystemExit(f"caption_dataset captioned {report.captioned} of {len(ds)} "
                                     f"images through the server; failed: {report.failed[:3]}")
                return server.max_in_flight
            return go

        runs = alternate({"sequential": run(1), f"{IN_FLIGHT} in flight": run(IN_FLIGHT)},
                         args.repeats)
    finally:
        server.shutdown()
        server.server_close()
    n = len(ds)
    seq, par = best_run(runs["sequential"]), best_run(runs[f"{IN_FLIGHT} in flight"])
    print_table(
        f"caption {n} images through OpenAIServerCaptioner + caption_dataset, best of "
        f"{args.repeats} undisturbed runs (order alternated)",
        f"the same with concurrency=1 (one request at a time); the server is a local stand-in that "
        f"decodes each image and waits {args.server_latency * 1000:g} ms (a GPU server with "
        f"{IN_FLIGHT} parallel slots), so this measures the client's concurrency, not a model",
        [Row(f"concurrency={IN_FLIGHT} (peak {par.info} in flight)", par.seconds, seq.seconds,
             OPENAI_TARGET)])
    ideal = n * args.server_latency
    print(f"images/s: sequential {n / seq.seconds:.2f}, {IN_FLIGHT} in flight {n / par.seconds:.2f}; "
          f"speed-up {seq.seconds / par.seconds:.2f}x (ideal {IN_FLIGHT}x: the server alone needs "
          f"{ideal:.2f} s sequential, {ideal / IN_FLIGHT:.2f} s with {IN_FLIGHT} slots)")
    print_runs(runs)


def bench_servers(args: argparse.Namespace, ds: Dataset, settings: CaptionSettings) -> None:
    """Two stand-in servers of the same fixed latency, against one of them alone."""
    from lora_lab.captioning.openai_server import OpenAIServerCaptioner

    servers = [FakeServer(SERVERS_LATENCY_S) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True, name="bench-server").start()
    try:
        engines = {n: OpenAIServerCaptioner([s.url for s in servers[:n]], concurrency=IN_FLIGHT,
                                            max_tokens=args.max_tokens, temperature=TEMPERATURE)
                   for n in (1, 2)}

        def run(n: int) -> Callable[[], list[int]]:
            def go() -> list[int]:
                before = [s.answered for s in servers]
                report = caption_dataset(ds, engines[n], settings)
                if report.captioned != len(ds):
                    raise SystemExit(f"caption_dataset captioned {report.captioned} of {len(ds)} "
                                     f"images through {n} server(s); failed: {report.failed[:3]}")
                return [s.answered - b for s, b in zip(servers, before)]
            return go

        runs = alternate({"1 server": run(1), "2 servers": run(2)}, args.repeats)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    one, two = best_run(runs["1 server"]), best_run(runs["2 servers"])
    print_table(
        f"caption {len(ds)} images through OpenAIServerCaptioner on 2 servers, concurrency="
        f"{IN_FLIGHT} each, best of {args.repeats} undisturbed runs (order alternated)",
        f"the same on one of them; each server is a local stand-in that waits "
        f"{SERVERS_LATENCY_S * 1000:g} ms per request",
        [Row(f"2 servers (images each: {two.info})", two.seconds, one.seconds, SERVERS_TARGET)])
    print(f"images/s: 1 server {len(ds) / one.seconds:.2f}, 2 servers {len(ds) / two.seconds:.2f}; "
          f"speed-up {one.seconds / two.seconds:.2f}x (target >= 1.8x, ideal 2x)")
    print_runs(runs)


# -- shared ----------------------------------------------------------------------------------------
@dataclass
class Run:
    seconds: float
    foreign: float  # other processes' CPU use during the run, in cores; nan where unknown
    info: Any = None  # what the timed function returned

    @property
    def disturbed(self) -> bool:
        return self.foreign > DISTURBED_CORES


def alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Run]]:
    """Each function timed ``repeats`` times, the order reversed every round so that neither
    always runs first. A run during which other processes used the CPUs is retried (up to
    :data:`TRIES` times) after waiting for them to calm down; it is kept but marked."""
    runs: dict[str, list[Run]] = {k: [] for k in fns}
    order = list(fns)
    for _ in range(repeats):
        for k in order:
            for _ in range(TRIES):
                wait_for_quiet()
                run = measure(fns[k])
                runs[k].append(run)
                print(f"#   {k}: {run.seconds:.2f} s, other processes {run.foreign:.2f} cores"
                      + (" (disturbed)" if run.disturbed else ""), flush=True)
                if not run.disturbed:
                    break
        order.reverse()
    return runs


def best_run(runs: list[Run]) -> Run:
    """The fastest undisturbed run, else the fastest: noise only ever adds time."""
    return min([r for r in runs if not r.disturbed] or runs, key=lambda r: r.seconds)


def print_runs(runs: dict[str, list[Run]]) -> None:
    for k, rs in runs.items():
        clean = [r for r in rs if not r.disturbed]
        print(f"{k}: {len(clean)} undisturbed of {len(rs)} runs"
              + ("" if clean else " (all disturbed: the figures are unreliable)")
              + (f", median {statistics.median(r.seconds for r in clean):.2f} s" if clean else ""))


def measure(fn: Callable[[], Any]) -> Run:
    busy, own = cpu_busy(), own_cpu()
    start = time.perf_counter()
    info = fn()
    wall = time.perf_counter() - start
    # Clock-tick granularity can make a quiet run read slightly negative.
    return Run(wall, max(0.0, ((cpu_busy() - busy) - (own_cpu() - own)) / wall), info)


def wait_for_quiet(limit_s: float = QUIET_WAIT_S) -> None:
    """Wait (up to ``limit_s``) until other processes leave the CPUs alone for a second."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        run = measure(lambda: time.sleep(1.0))
        if not run.disturbed:
            return


def timed_s(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def generate_photos(folder: Path, count: int, quality: int = 90) -> list[Path]:
    """``count`` photo-like JPEGs (gradient, grain, shapes) cycling through :data:`SIZES`;
    the same bytes on every run."""
    folder.mkdir(parents=True, exist_ok=True)
    big = max(max(s) for s in SIZES)
    noise = np.random.default_rng(0).normal(0, 10, (2 * big, 2 * big, 3)).astype(np.int16)
    paths = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        rng = np.random.default_rng([w, h, i])
        t = np.clip((rng.uniform(-1, 1) * np.linspace(0, 1, w, dtype=np.float32)[None, :]
                     + rng.uniform(-1, 1) * np.linspace(0, 1, h, dtype=np.float32)[:, None] + 1) / 2,
                    0, 1)[..., None]
        start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        ox, oy = rng.integers(0, big, 2)
        pixels = (start + (end - start) * t).astype(np.int16) + noise[oy:oy + h, ox:ox + w]
        im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x, y = rng.integers(0, w), rng.integers(0, h)
            sw, sh = rng.integers(min(w, h) // 16, min(w, h) // 3, 2)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x, y, x + sw, y + sh), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        path = folder / f"photo_{i:05d}.jpg"
        im.save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths


def _pixels(path: Path) -> int:
    with Image.open(path) as im:
        return im.width * im.height


def _sizes() -> str:
    return ", ".join(f"{w}x{h}" for w, h in SIZES)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="images to caption (default 64; --quick 16)")
    parser.add_argument("--repeats", "--repeat", type=int,
                        help="runs per measurement (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 images, 1 run")
    parser.add_argument("--max-tokens", type=int, default=300,
                        help="tokens generated per caption (LlamaCaptioner's default: 300)")
    parser.add_argument("--server-latency", type=float, default=0.2,
                        help="seconds the stand-in OpenAI server takes per request")
    parser.add_argument("--model", help="a caption model GGUF instead of the tiny one (with --mmproj)")
    parser.add_argument("--mmproj", help="its vision projector GGUF")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to run")
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = 16 if args.quick else 64
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if min(args.images, args.repeats, args.max_tokens) < 1 or args.server_latency < 0:
        parser.error("--images, --repeats and --max-tokens must be at least 1, "
                     "--server-latency at least 0")
    if bool(args.model) != bool(args.mmproj):
        parser.error("--model and --mmproj go together")
    return args


if __name__ == "__main__":
    main()
