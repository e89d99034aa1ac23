"""`lora-lab lora resize` on a full-size SDXL-shaped LoRA: rank 128, random weights, every
attention and feed-forward linear of SDXL's UNet (kohya's LDM names), resized to rank 32.

    .venv/bin/python bench/bench_resize.py                    # best of 3: all modules on a GPU, every 20th on a CPU
    .venv/bin/python bench/bench_resize.py --every 1          # all 722 on a CPU too (the floor: hours on 2 cores)
    .venv/bin/python bench/bench_resize.py --every 60 --repeats 1   # quick: every 60th module (minutes)
    .venv/bin/python bench/bench_resize.py --device cuda

The module list and shapes come from diffusers' UNet2DConditionModel built on the meta device
from SDXL's config (bench/gpu/random_models.py): nothing is downloaded or allocated for it.
Floor, measured in the same run: a bare per-layer loop, delta = up @ down * alpha / rank, then
`torch.linalg.svd(delta, full_matrices=False)` and the top 32 singular triplets, as sd-scripts'
resize_lora.py does. Rows: lora_lab's `resize_modules` on the same tensors in memory, and the whole
`resize_lora` (read the fp16 file, resize, hash, write) against the floor plus reading that file.
Both results are compared: every module's resized update must match the floor's to float32
rounding. Target: <= 1.2x the floor.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchlib import Row, Target, print_machine, print_table
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent / "gpu"))
from random_models import SDXL_UNET  # noqa: E402

from lora_lab.tools.layouts import Lora  # noqa: E402
from lora_lab.tools.resize import resize_lora, resize_modules  # noqa: E402
from lora_lab.training.kohya_names import ldm_unet_path  # noqa: E402
from lora_lab.training.lora_file import lora_hashes, ss_metadata  # noqa: E402

RANK, ALPHA, NEW_RANK = 128, 64.0, 32
TARGET = Target(ratio=1.2)


def sdxl_modules() -> dict[str, tuple[int, int]]:
    """kohya key prefix -> (out, in) of every Linear in SDXL's attention blocks (attn1, attn2, ff,
    proj_in/out), from the UNet built on the meta device."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    return {f"lora_unet_{ldm_unet_path(name, unet.config).replace('.', '_')}": (m.out_features, m.in_features)
            for name, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear) and ".attentions." in name}


def random_loras(modules: dict[str, tuple[int, int]], device: str) -> dict[str, Lora]:
    g = torch.Generator().manual_seed(0)
    return {key: Lora((torch.randn(RANK, n_in, generator=g) / n_in ** 0.5).to(device),
                      (torch.randn(n_out, RANK, generator=g) * 0.02).to(device), torch.tensor(ALPHA))
            for key, (n_out, n_in) in modules.items()}


def bare_loop(loras: dict[str, Lora]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The floor: the full update of each module and its SVD, one module at a time."""
    out = {}
    for key, lora in loras.items():
        delta = lora.up @ lora.down * (ALPHA / lora.rank)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        out[key] = (vh[:NEW_RANK], u[:, :NEW_RANK] * s[:NEW_RANK])
    return out


def check_same(ours: dict[str, Lora], floor: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The largest relative Frobenius distance between the two resized updates of a module."""
    worst = 0.0
    for key, (down, up) in floor.items():
        want = (up @ down).double()
        lora = ours[key]
        got = (lora.up.double() @ lora.down.double()) * (float(lora.alpha) / lora.rank)
        worst = max(worst, float((got - want).norm() / want.norm()))
    return worst


def timed(fn, device: str) -> tuple[float, object]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def best(fn, repeats: int, device: str) -> tuple[float, object]:
    runs = [timed(fn, device) for _ in range(repeats)]
    return min(t for t, _ in runs), runs[-1][1]


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    print_machine()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    modules = dict(list(sdxl_modules().items())[::args.every])
    loras = random_loras(modules, args.device)
    sizes = sorted({shape for shape in modules.values()})
    print(f"# {len(modules)} modules of SDXL's UNet ({len(sizes)} shapes, {sizes}), rank {RANK} -> {NEW_RANK}",
          flush=True)
    resize = lambda: resize_modules(loras, NEW_RANK)[0]  # noqa: E731
    resize()  # warm: kernels, allocator
    floor_s, floor = best(lambda: bare_loop(loras), args.repeats, args.device)
    ours_s, ours = best(resize, args.repeats, args.device)
    distance = check_same(ours, floor)
    rows = [Row("resize_modules, in memory", ours_s, floor_s, TARGET)]
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        src = Path(tmp, "sdxl-r128.safetensors")
        tensors = {}
        for key, lora in loras.items():
            tensors |= {f"{key}.lora_down.weight": lora.down.cpu().half(),
                        f"{key}.lora_up.weight": lora.up.cpu().half(), f"{key}.alpha": torch.tensor(ALPHA)}
        meta = ss_metadata(family="sdxl", network_dim=RANK, network_alpha=ALPHA)
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = lora_hashes(tensors, meta)
        save_file(tensors, str(src), metadata=meta)
        n = iter(range(10 ** 6))
        file_s, _ = best(lambda: resize_lora(src, Path(tmp, f"r32-{next(n)}.safetensors"), NEW_RANK),
                         args.repeats, "cpu")

        read_s, _ = best(lambda: load_file(str(src)), args.repeats, "cpu")
        file_floor_s = read_s + floor_s  # the bare loop run once above, plus reading the file
        rows.append(Row(f"resize_lora, fp16 file to file ({src.stat().st_size / 2**20:.0f} MiB), on the CPU",
                        file_s, file_floor_s, TARGET))
    print_table(f"resize a rank-{RANK} SDXL LoRA to rank {NEW_RANK}, best of {args.repeats}",
                "a bare per-layer torch.linalg.svd(up @ down) loop (+ reading the file, for the file row)", rows)
    print(f"\nlargest relative distance between lora_lab's and the floor's resized updates: {distance:.2e}"
          f" ({'same' if distance < 1e-4 else 'DIFFERENT'})")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (the best counts)")
    parser.add_argument("--every", type=int, help="take every Nth module (default: all of them on a GPU, "
                                                  "every 20th on a CPU, where the floor takes hours)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the in-memory row runs (default: cuda when there is one)")
    args = parser.parse_args(argv)
    args.every = args.every or (1 if args.device == "cuda" else 20)
    if min(args.repeats, args.every) < 1:
        parser.error("--repeats and --every must be at least 1")
    return args


if __name__ == "__main__":
    main()
