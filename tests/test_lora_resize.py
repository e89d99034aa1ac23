"""`lora-lab lora resize`: rank reduction by SVD, checked against a direct SVD of each module's full
update, on hand-built kohya files (linear, 1x1 and 3x3 conv modules, alpha != rank), BFL-fused
Flux files (resized part by part), and LoRAs saved from the tiny SDXL (kohya and diffusers layouts,
reloaded by diffusers)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_lora_file import bases, fresh, generate, sdxl  # noqa: F401 (fixtures)

from lora_lab.tools.files import read_file
from lora_lab.tools.resize import keep_count, resize_lora
from lora_lab.training.bfl_names import FLUX1, fuse
from lora_lab.training.lora_file import describe_lora, file_model_hash, lora_hashes, read_lora, ss_metadata

# kohya module -> (out, in[, kernel]): attention and MLP linears, a 1x1 and a 3x3 convolution, the text encoder
MODULES = {
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": (64, 64),
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (64, 48),
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj": (256, 64),
    "lora_unet_down_blocks_1_attentions_0_proj_in": (64, 64, 1),
    "lora_unet_down_blocks_0_resnets_0_conv1": (32, 32, 3),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (32, 32),
}


def kohya_file(path: Path, rank: int = 8, alpha: float = 4.0, *, seed: int = 0, family: str = "sd15",
               modules: dict = MODULES, dtype=torch.float32, **extra: torch.Tensor) -> Path:
    """A kohya LoRA as sd-scripts writes one: random downs and ups, alpha, ss_* metadata, hashes."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, (n_out, n_in, *kernel) in modules.items():
        k = kernel[0] if kernel else None
        down = torch.randn(rank, n_in, *([k, k] if k else []), generator=g) * 0.2
        up = torch.randn(n_out, rank, *([1, 1] if k else []), generator=g) * 0.2
        tensors |= {f"{key}.lora_down.weight": down.to(dtype), f"{key}.lora_up.weight": up.to(dtype),
                    f"{key}.alpha": torch.tensor(alpha)}
    tensors |= extra
    meta = ss_metadata(family=family, network_dim=rank, network_alpha=alpha, training_comment="hand-built")
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = lora_hashes(tensors, meta)
    save_file(tensors, str(path), metadata=meta)
    return path


def deltas(path: Path) -> dict[str, torch.Tensor]:
    """Each module's update, scale included, from the file as written (the tools' own reading
    is what is tested, so this reads the kohya keys directly)."""
    tensors = load_file(str(path))
    out = {}
    for key in tensors:
        if key.endswith(".lora_down.weight"):
            prefix = key.removesuffix(".lora_down.weight")
            down, up = tensors[key].float(), tensors[f"{prefix}.lora_up.weight"].float()
            out[prefix] = (up.flatten(1) @ down.flatten(1)) * (tensors[f"{prefix}.alpha"].item() / down.shape[0])
    return out


def assert_near(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> None:
    """Equal to float32 rounding: a relative Frobenius distance, whatever the entries' size."""
    assert float((got.double() - want.double()).norm() / want.double().norm()) < tol


def truncated(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """The best rank-k approximation of ``delta`` by a direct SVD, and its relative error."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    best = (u[:, :k] * s[:k]) @ vh[:k]
    return best.float(), float((delta.double() - best).norm() / delta.double().norm())


def test_resize_to_full_rank_is_lossless(cli, tmp_path):
    src = kohya_file(tmp_path / "a.safetensors")
    before = src.read_bytes()
    out = cli("lora", "resize", src, "--rank", 8, "--out", tmp_path / "b.safetensors")[1]
    assert "6 modules resized (fixed, rank <= 8) from rank 8: largest error 0.00%" in out
    for module, delta in deltas(tmp_path / "b.safetensors").items():
        assert_near(delta, deltas(src)[module])
    assert src.read_bytes() == before


def test_resize_down_matches_a_direct_svd_and_reports_its_error(cli, tmp_path):
    src = kohya_file(tmp_path / "a.safetensors")
    out = tmp_path / "b.safetensors"
    report = json.loads(cli("lora", "resize", src, "--rank", 3, "--out", out, "--json")[1])
    assert report["original_rank"] == 8 and report["rank"] == 3 and report["method"] == "fixed"
    layers = {layer["module"]: layer for layer in report["layers"]}
    assert layers.keys() == MODULES.keys()
    tensors, meta = read_lora(out)
    for module, delta in deltas(src).items():
        best, error = truncated(delta, 3)
        assert_near(deltas(out)[module], best)
        assert layers[module]["error"] == pytest.approx(error, rel=1e-4)
        assert layers[module]["fro_retained"] == pytest.approx((1 - error ** 2) ** 0.5, rel=1e-4)
        assert (layers[module]["old_rank"], layers[module]["new_rank"]) == (8, 3)
        assert tensors[f"{module}.lora_down.weight"].shape[0] == 3
        assert tensors[f"{module}.alpha"].item() == pytest.approx(4.0 / 8 * 3)  # the scale kept
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tensors[f"{conv}.lora_down.weight"].shape == (3, 32, 3, 3)
    assert tensors[f"{conv}.lora_up.weight"].shape == (32, 3, 1, 1)
    assert meta["ss_network_dim"] == "3" and meta["ss_network_alpha"] == "1.5"
    assert meta["ss_training_comment"] == "dimension is resized from 8 to 3; hand-built"
    recorded = json.loads(meta["lora_lab_resize"])
    assert recorded["original_rank"] == 8 and recorded["original_file"] == "a.safetensors"
    assert recorded["original_model_hash"] == read_lora(src)[1]["sshs_model_hash"]
    assert meta["sshs_model_hash"] == file_model_hash(out) != recorded["original_model_hash"]
    assert meta["ss_base_model_version"] == "sd_v1"  # the rest kept
    table = cli("lora", "resize", src, "--rank", 2, "--out", tmp_path / "c.safetensors")[1]
    assert re.search(rf"^{conv} +8->2 +\d+\.\d\d%", table, re.M)
    assert "6 modules resized (fixed, rank <= 2) from rank 8" in table


def test_conv_rank_sets_the_rank_of_larger_convolutions(cli, tmp_path):
    src = kohya_file(tmp_path / "a.safetensors")
    cli("lora", "resize", src, "--rank", 4, "--conv-rank", 2, "--out", tmp_path / "b.safetensors")
    ranks = {k.removesuffix(".lora_down.weight"): v.shape[0]
             for k, v in load_file(tmp_path / "b.safetensors").items() if k.endswith(".lora_down.weight")}
    assert ranks.pop("lora_unet_down_blocks_0_resnets_0_conv1") == 2
    assert set(ranks.values()) == {4}  # the 1x1 convolution is resized with the linears


def test_resize_from_python(tmp_path):
    src = kohya_file(tmp_path / "a.safetensors")
    report = resize_lora(src, tmp_path / "b.safetensors", 8, method="sv_fro", param=0.9)
    assert report.path == str(tmp_path / "b.safetensors") and report.original_rank == 8
    assert sorted(layer.module for layer in report.layers) == sorted(MODULES)
    for layer in report.layers:
        assert layer.new_rank < 8 and layer.fro_retained >= 0.9 - 1e-6 and layer.error <= (1 - 0.81) ** 0.5 + 1e-6
    assert report.max_error == max(layer.error for layer in report.layers)
    assert report.table().splitlines()[-1].startswith("6 modules resized (sv_fro 0.9, rank <= 8) from rank 8")


def spectrum_file(path: Path, spectra: dict[str, list[float]], alpha: float = 8.0) -> Path:
    """A kohya file whose modules' updates have the given singular values (before the scale)."""
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for i, (module, s) in enumerate(spectra.items()):
        u, _ = torch.linalg.qr(torch.randn(40, len(s), generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(30, len(s), generator=g, dtype=torch.float64))
        key = f"lora_unet_m{i}_{module}"
        tensors |= {f"{key}.lora_up.weight": (u * torch.tensor(s, dtype=torch.float64)).float().contiguous(),
                    f"{key}.lora_down.weight": v.T.float().contiguous(), f"{key}.alpha": torch.tensor(alpha)}
    save_file(tensors, str(path), metadata=ss_metadata(family="sd15", network_dim=8, network_alpha=alpha))
    return path


# kohya's rules, written out on plain lists: the count each method keeps
def _sv_ratio(s, x):
    return sum(v > s[0] / x for v in s)


def _share(values, x):
    total, running = sum(values), 0.0
    for i, v in enumerate(values):
        running += v
        if running / total >= x:
            return i + 1
    return len(values)


SPECTRA = {"steep": [10, 5, 2, 1, 0.5, 0.1, 0.01, 0.001], "flat": [3, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4, 2.3],
           "one": [4, 1e-3, 1e-4, 1e-5, 0, 0, 0, 0]}


@pytest.mark.parametrize("method, param", [("sv_ratio", 4), ("sv_ratio", 1.22), ("sv_fro", 0.9),
                                           ("sv_fro", 0.999), ("sv_cumulative", 0.8)])
def test_dynamic_methods_choose_each_rank_as_kohya_does(cli, tmp_path, method, param):
    src = spectrum_file(tmp_path / "a.safetensors", SPECTRA)
    out = tmp_path / "b.safetensors"
    report = json.loads(cli("lora", "resize", src, "--rank", 6, "--dynamic", method, "--dynamic-param",
                            param, "--out", out, "--json")[1])
    for layer, (name, s) in zip(report["layers"], SPECTRA.items()):
        if method == "sv_ratio":
            want = _sv_ratio(s, param)
        elif method == "sv_fro":
            want = _share([v * v for v in s], param ** 2)
        else:
            want = _share(s, param)
        assert layer["module"].endswith(name) and layer["new_rank"] == min(want, 6), (name, layer)
        assert keep_count(torch.tensor(s), 6, method, param) == min(want, 6)
    meta = read_lora(out)[1]
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic"
    assert meta["ss_training_comment"].startswith(f"Dynamic resize with {method}: {float(param)} from 8")
    assert json.loads(meta["lora_lab_resize"])["method"] == method
    # --rank is only a cap for a dynamic method: above the LoRA's rank is allowed
    cli("lora", "resize", src, "--rank", 64, "--dynamic", method, "--dynamic-param", param,
        "--out", tmp_path / "c.safetensors")


def test_a_sparse_sdxl_file_keeps_its_own_keys(cli, tmp_path):
    """SDXL modules named the LDM way whose levels do not show the UNet's numbering (a few
    scattered blocks adapted) are resized under the keys the file has."""
    modules = {"lora_unet_input_blocks_2_0_in_layers_2": (32, 32, 3),
               "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_k": (64, 48),
               "lora_unet_output_blocks_2_1_proj_in": (64, 64, 1)}
    src = kohya_file(tmp_path / "a.safetensors", family="sdxl", modules=modules)
    report = json.loads(cli("lora", "resize", src, "--rank", 2, "--out", tmp_path / "b.safetensors", "--json")[1])
    assert [layer["module"] for layer in report["layers"]] == list(modules)
    got = deltas(tmp_path / "b.safetensors")
    assert got.keys() == modules.keys()
    for module, delta in deltas(src).items():
        assert_near(got[module], truncated(delta, 2)[0])


def test_bad_requests_are_refused_and_leave_nothing(cli, tmp_path):
    tmp_path = tmp_path / "files"  # beside the workspace
    tmp_path.mkdir()
    src = kohya_file(tmp_path / "a.safetensors")
    out = tmp_path / "b.safetensors"

    def refused(*argv, match):
        assert match in cli.fails("lora", "resize", *argv)
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", *others]

    others: list[str] = []
    refused(src, "--rank", 9, "--out", out, match="--rank 9 is above the LoRA's rank (8): resize only reduces")
    refused(src, "--rank", 0, "--out", out, match="--rank must be at least 1")
    refused(src, "--rank", 4, "--conv-rank", 9, "--out", out, match="--conv-rank 9 is above")
    refused(src, "--rank", 4, "--dynamic-param", 2, "--out", out, match="--dynamic-param needs --dynamic")
    refused(src, "--rank", 4, "--dynamic", "sv_fro", "--out", out, match="needs a positive --dynamic-param")
    refused(src, "--rank", 4, "--dynamic", "sv_fro", "--dynamic-param", 2, "--out", out, match="at most 1")
    refused(src, "--rank", 4, "--out", src, match="is an input file")
    refused(src, "--rank", 4, "--out", tmp_path / "b.ckpt", match="must name a .safetensors file")
    refused(src, "--rank", 4, "--out", tmp_path / "no" / "b.safetensors", match="does not exist")
    (tmp_path / "taken.safetensors").write_bytes(b"mine")
    others.append("taken.safetensors")
    refused(src, "--rank", 4, "--out", tmp_path / "taken.safetensors", match="already exists")
    assert (tmp_path / "taken.safetensors").read_bytes() == b"mine"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(tmp_path / "ckpt.safetensors"))
    (tmp_path / "notes.safetensors").write_text("not a tensor file")
    others += ["ckpt.safetensors", "notes.safetensors"]
    others.sort()
    refused(tmp_path / "ckpt.safetensors", "--rank", 4, "--out", out, match="holds no LoRA weights")
    refused(tmp_path / "notes.safetensors", "--rank", 4, "--out", out, match="is not a readable .safetensors file")
    refused(tmp_path / "missing.safetensors", "--rank", 4, "--out", out, match="LoRA file not found")
    scale = {"lora_unet_down_blocks_0_resnets_0_conv1.dora_scale": torch.ones(32, 1, 1, 1)}
    dora = kohya_file(tmp_path / "dora.safetensors", **scale)
    others = sorted([*others, "dora.safetensors"])
    refused(dora, "--rank", 4, "--out", out, match="is a DoRA")


def flux_file(path: Path, spectra: dict[str, list[float]], hidden: int = 32) -> Path:
    """A Flux file (ComfyUI's BFL layout) whose block-0 q/k/v LoRAs, fused into img_attn.qkv, have
    updates with the given singular values (before the scale 1 / rank), and an ff.net.2 LoRA."""
    g = torch.Generator().manual_seed(0)
    loras = {}
    for part, s in spectra.items():
        u, _ = torch.linalg.qr(torch.randn(hidden, len(s), generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(hidden, len(s), generator=g, dtype=torch.float64))
        loras[f"transformer_blocks.0.attn.{part}"] = (v.T.float().contiguous(),
                                                      (u * torch.tensor(s, dtype=torch.float64)).float(), 1.0)
    rank = len(next(iter(spectra.values())))
    loras["transformer_blocks.0.ff.net.2"] = (torch.randn(rank, hidden, generator=g),
                                              torch.randn(hidden, rank, generator=g), 1.0)
    tensors = {}
    for module, (down, up, alpha) in fuse(FLUX1, loras, lambda _: hidden).items():
        key = FLUX1.key(module)
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
    save_file(tensors, str(path), metadata=ss_metadata(family="flux", network_dim=rank, network_alpha=1.0))
    return path


QKV = "diffusion_model.double_blocks.0.img_attn.qkv"


def split_by_diffusers(path: Path) -> dict[str, torch.Tensor]:
    """{q/k/v: its update} as diffusers' Flux loader splits the fused module (scales folded in)."""
    from diffusers import FluxPipeline

    split = FluxPipeline.lora_state_dict(str(path))
    split = split[0] if isinstance(split, tuple) else split
    return {p: split[f"transformer.transformer_blocks.0.attn.{p}.lora_B.weight"]
            @ split[f"transformer.transformer_blocks.0.attn.{p}.lora_A.weight"] for p in ("to_q", "to_k", "to_v")}


def test_a_fused_flux_file_is_resized_part_by_part(cli, tmp_path):
    """Flux's fused q/k/v (three rank-2 LoRAs, block-diagonal up) are resized each to --rank and
    fused again: block-diagonal at the new rank, which inspect reports, and diffusers' Flux loader
    gives each projection the best approximation of its own update."""
    hidden = 32
    src = flux_file(tmp_path / "flux.safetensors", {p: [3.0, 1.0] for p in ("to_q", "to_k", "to_v")}, hidden)
    assert describe_lora(src)["ranks"] == [2]
    same = tmp_path / "same.safetensors"
    cli("lora", "resize", src, "--rank", 2, "--out", same)
    for module, delta in deltas(src).items():
        assert_near(deltas(same)[module], delta)

    out = tmp_path / "small.safetensors"
    report = json.loads(cli("lora", "resize", src, "--rank", 1, "--out", out, "--json")[1])
    layers = {layer["module"]: layer for layer in report["layers"]}
    assert len(layers) == 4 and layers["diffusion_model.double_blocks.0.img_mlp.2"]["new_rank"] == 1
    split = split_by_diffusers(out)
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        best, error = truncated(deltas(src)[QKV][i * hidden:(i + 1) * hidden], 1)
        layer = layers[f"{QKV}[attn.{part}]"]
        assert (layer["old_rank"], layer["new_rank"]) == (2, 1)
        assert layer["error"] == pytest.approx(error, rel=1e-4) and error == pytest.approx(1 / 10 ** 0.5)
        assert_near(deltas(out)[QKV][i * hidden:(i + 1) * hidden], best)
        assert_near(split[part], best)
    assert load_file(out)[f"{QKV}.lora_down.weight"].shape[0] == 3
    assert describe_lora(out)["ranks"] == [1]  # block-diagonal again: one rank-1 LoRA per projection


def test_a_dynamic_resize_fuses_parts_of_different_ranks(cli, tmp_path):
    """sv_ratio 4 keeps 1 singular value of q's update and 2 of k's and v's: the fused module's up
    is block-diagonal with blocks 1, 2 and 2 wide; read back (resize, merge, convert) it splits
    into those parts, and diffusers' Flux loader gives each projection its update."""
    hidden = 32
    spectra = {"to_q": [3.0, 0.5], "to_k": [3.0, 1.0], "to_v": [3.0, 2.0]}
    src = flux_file(tmp_path / "flux.safetensors", spectra, hidden)
    out = tmp_path / "dynamic.safetensors"
    report = json.loads(cli("lora", "resize", src, "--rank", 2, "--dynamic", "sv_ratio", "--dynamic-param", 4,
                            "--out", out, "--json")[1])
    assert {layer["module"]: layer["new_rank"] for layer in report["layers"] if "qkv" in layer["module"]} == {
        f"{QKV}[attn.to_q]": 1, f"{QKV}[attn.to_k]": 2, f"{QKV}[attn.to_v]": 2}
    tensors = load_file(out)
    up = tensors[f"{QKV}.lora_up.weight"]
    assert up.shape == (3 * hidden, 5) and not up[hidden:, :1].any() and not up[:hidden, 1:].any()
    assert tensors[f"{QKV}.alpha"].item() == pytest.approx(5 / 2)  # the parts' scale 1/2 kept
    split = split_by_diffusers(out)
    for i, part in enumerate(spectra):
        best, _ = truncated(deltas(src)[QKV][i * hidden:(i + 1) * hidden], 1 if part == "to_q" else 2)
        assert_near(deltas(out)[QKV][i * hidden:(i + 1) * hidden], best)
        assert_near(split[part], best)
    ranks = {m.rsplit(".", 1)[1]: lora.rank for m, lora in read_file(out).modules.items() if ".attn." in m}
    assert ranks == {"to_q": 1, "to_k": 2, "to_v": 2}
    again = json.loads(cli("lora", "resize", out, "--rank", 1, "--out", tmp_path / "again.safetensors", "--json")[1])
    assert {layer["old_rank"] for layer in again["layers"] if "qkv" in layer["module"]} == {1, 2}


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_a_tiny_sdxl_lora_resized_to_its_rank_gives_the_same_images(cli, tmp_path, bases, sdxl, layout):  # noqa: F811
    """The tiny SDXL LoRA (UNet rank 4 alpha 8, text encoders rank 4 alpha 2), resized to rank 4,
    reloads in diffusers to the images of the trained adapters; at rank 2 it loads and differs."""
    src = Path(getattr(sdxl, layout))
    full, small = tmp_path / "full.safetensors", tmp_path / "small.safetensors"
    cli("lora", "resize", src, "--rank", 4, "--out", full)
    pipe = fresh(bases, "sdxl")
    pipe.load_lora_weights(str(full))
    np.testing.assert_allclose(generate(pipe), sdxl.image, atol=2e-4)
    report = json.loads(cli("lora", "resize", src, "--rank", 2, "--out", small, "--json")[1])
    assert {layer["new_rank"] for layer in report["layers"]} == {2} and report["max_error"] > 0.1
    assert describe_lora(small)["format"] == layout and describe_lora(small)["ranks"] == [2]
    pipe = fresh(bases, "sdxl")
    pipe.load_lora_weights(str(small))
    assert not np.allclose(generate(pipe), sdxl.image, atol=2e-4)
    if layout == "diffusers":  # the adapter metadata says the new rank and the kept scale
        config = json.loads(read_lora(small)[1]["lora_adapter_metadata"])
        assert config["unet.r"] == 2 and config["unet.lora_alpha"] == pytest.approx(8 / 4 * 2)
        assert config["text_encoder.lora_alpha"] == pytest.approx(2 / 4 * 2)


def test_a_comfyui_layout_zimage_lora_resized_to_its_rank_gives_the_same_images(cli, tmp_path, tiny_flow):
    """ComfyUI's layout (`diffusion_model.` keys with lora_A/lora_B and alpha), as Z-Image files are
    written: resized to its rank, diffusers loads it to the same images; at rank 2, smaller."""
    from test_bfl_names import _trained
    from test_train_flow import _images

    from lora_lab.training.base_model import load_base_model
    from lora_lab.training.lora_file import save_lora

    denoiser, _ = _trained(tiny_flow, "zimage", "attn")
    src = save_lora(tmp_path / "z.safetensors", denoiser, [], family="zimage", dtype=torch.float32,
                    metadata=ss_metadata(family="zimage", network_dim=4, network_alpha=2))
    assert describe_lora(src)["format"] == "comfyui"
    cli("lora", "resize", src, "--rank", 4, "--out", tmp_path / "full.safetensors")
    cli("lora", "resize", src, "--rank", 2, "--out", tmp_path / "small.safetensors")
    small = describe_lora(tmp_path / "small.safetensors")
    assert (small["format"], small["ranks"], small["alphas"]) == ("comfyui", [2], [1.0])
    images = {}
    for name in ("z", "full", "small"):
        pipe = load_base_model(str(tiny_flow["zimage"]), "zimage").pipeline
        pipe.load_lora_weights(str(tmp_path / f"{name}.safetensors"))
        images[name] = _images(pipe)
    np.testing.assert_allclose(images["full"], images["z"], atol=2e-4)
    assert not np.allclose(images["small"], images["z"], atol=2e-4)
