"""`lora-lab lora merge`: LoRAs into one by concatenated ranks (exactly the weighted sum of their
updates) or SVD to a rank, and LoRAs fused into a base model saved as a diffusers pipeline; on
hand-built kohya and Flux files and on LoRAs of the tiny SD1.5 (images against diffusers loading
the LoRAs side by side at the same weights), files of different layouts merged as one."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file
from test_lora_file import ATTN, MLP, TE, adapted, bases, fresh, generate, lora, save  # noqa: F401
from test_lora_resize import MODULES, assert_near, deltas, kohya_file, truncated

from lora_lab.tools.convert import convert_file
from lora_lab.tools.files import read_file
from lora_lab.tools.merge import merge_loras
from lora_lab.training.bfl_names import FLUX1, fuse
from lora_lab.training.lora_file import describe_lora, file_model_hash, read_lora, ss_metadata

# the second file adapts a module the first lacks, and lacks one the first has
OTHER = {**{k: v for k, v in MODULES.items() if "attn2" not in k},
         "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v": (64, 64)}


@pytest.fixture
def files(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    a = kohya_file(folder / "a.safetensors", rank=8, alpha=4.0, seed=1)
    b = kohya_file(folder / "b.safetensors", rank=4, alpha=1.0, seed=2, modules=OTHER)
    return folder, a, b


def weighted_sum(paths, weights) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path, weight in zip(paths, weights):
        for module, delta in deltas(path).items():
            out[module] = out.get(module, 0) + weight * delta
    return out


def test_concatenated_ranks_give_exactly_the_weighted_sum(cli, files):
    folder, a, b = files
    out = folder / "ab.safetensors"
    text = cli("lora", "merge", a, b, "--weights", 0.7, -0.4, "--out", out)[1]
    assert f"merged 2 sd15 LoRA(s) (kohya) by concatenated ranks (exact): 7 modules, rank 4/8/12 -> {out}" in text
    want = weighted_sum([a, b], [0.7, -0.4])
    got = deltas(out)
    assert got.keys() == want.keys()
    for module in want:
        assert_near(got[module], want[module])
    tensors, meta = read_lora(out)
    assert tensors[f"{next(iter(MODULES))}.lora_down.weight"].shape[0] == 12  # 8 + 4, alpha = 12
    assert tensors[f"{next(iter(MODULES))}.alpha"].item() == 12
    recorded = json.loads(meta["lora_lab_merge"])
    assert recorded["method"] == "concat" and [f["weight"] for f in recorded["files"]] == [0.7, -0.4]
    assert meta["sshs_model_hash"] == file_model_hash(out) and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_dim"] == "Dynamic"  # 12 where both adapt a module, 8 or 4 where one does


def test_a_target_rank_is_the_svd_of_the_summed_update(cli, files):
    folder, a, b = files
    out = folder / "ab3.safetensors"
    report = json.loads(cli("lora", "merge", a, b, "--weights", 1, 0.5, "--rank", 3, "--out", out, "--json")[1])
    assert report["rank"] == 3 and report["ranks"] == [3]
    errors = {layer["module"]: layer["error"] for layer in report["layers"]}
    for module, summed in weighted_sum([a, b], [1, 0.5]).items():
        best, error = truncated(summed, 3)
        assert_near(deltas(out)[module], best)
        assert errors[module] == pytest.approx(error, rel=1e-4)
    assert json.loads(read_lora(out)[1]["lora_lab_merge"])["method"] == "svd"


def test_merge_from_python(files):
    folder, a, b = files
    report = merge_loras([a, b], folder / "ab.safetensors", [0.5, 0.5])
    assert (report.family, report.format, report.rank, report.ranks, report.modules) == ("sd15", "kohya", None,
                                                                                         [4, 8, 12], 7)
    assert report.text().splitlines()[1:] == [f"  0.5 x {a}", f"  0.5 x {b}"]


def test_fused_flux_modules_stay_block_diagonal(cli, tmp_path):
    hidden = 16
    names = [f"transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v")]
    paths = []
    for seed, rank in ((0, 2), (1, 3)):
        g = torch.Generator().manual_seed(seed)
        loras = {n: (torch.randn(rank, hidden, generator=g), torch.randn(hidden, rank, generator=g), 1.0)
                 for n in names}
        tensors = {}
        for module, (down, up, alpha) in fuse(FLUX1, loras, lambda _: hidden).items():
            key = FLUX1.key(module)
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(alpha)}
        paths.append(tmp_path / f"f{seed}.safetensors")
        save_file(tensors, str(paths[-1]), metadata=ss_metadata(family="flux", network_dim=rank, network_alpha=1.0))
    out = tmp_path / "merged.safetensors"
    cli("lora", "merge", *paths, "--weights", 0.5, 2, "--out", out)
    assert load_file(out)["diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight"].shape[0] == 15
    assert {lora.rank for lora in read_file(out).modules.values()} == {5} and describe_lora(out)["ranks"] == [5]
    for module, summed in weighted_sum(paths, [0.5, 2]).items():
        assert_near(deltas(out)[module], summed)


def test_bad_merges_are_refused_and_leave_nothing(cli, files, tmp_path, sd15_pair):
    folder, a, b = files
    xl = kohya_file(folder / "xl.safetensors", family="sdxl")
    out = folder / "m.safetensors"
    before = sorted(p.name for p in folder.iterdir())

    def refused(*argv, match):
        assert match in cli.fails("lora", "merge", *argv)
        assert sorted(p.name for p in folder.iterdir()) == before

    refused(a, xl, "--out", out, match="cannot merge LoRAs of different families: a.safetensors is sd15, "
                                       "xl.safetensors is sdxl")
    refused(a, b, "--weights", 1, "--out", out, match="1 weight(s) for 2 LoRA file(s)")
    refused(a, b, "--weights", 1, 2, 3, "--out", out, match="3 weight(s) for 2 LoRA file(s)")
    refused(a, b, "--out", a, match="is an input file")
    refused(a, b, "--out", b, match="is an input file")
    refused(a, b, "--out", xl, match="already exists")
    refused(a, b, "--rank", 13, "--out", out, match="--rank 13 is above the merged rank (12)")
    refused(a, b, "--rank", 2, "--into", str(folder), "--out", folder / "pipe", match="--rank and --into")
    (folder / "notes.safetensors").write_text("text")
    before.append("notes.safetensors")
    before.sort()
    refused(a, folder / "notes.safetensors", "--out", out, match="is not a readable .safetensors file")
    assert "xl.safetensors is a LoRA for sdxl, base" in cli.fails(
        "lora", "merge", xl, "--into", sd15_pair.bases["sd15"], "--out", folder / "pipe")
    assert not (folder / "pipe").exists()


@pytest.fixture(scope="module")
def sd15_pair(bases, tmp_path_factory):  # noqa: F811
    """Two LoRAs of the tiny SD1.5 with different targets, ranks and alphas (the second with
    the text encoder too), in kohya's layout, and the first in diffusers' too."""
    folder = tmp_path_factory.mktemp("pair")
    first = adapted(bases, "sd15", lora(4, 8, ATTN), None)
    second = adapted(bases, "sd15", lora(2, 1, MLP), lora(2, 2, TE))
    return type("Pair", (), {
        "bases": bases, "kohya": save(first, folder / "a.safetensors"),
        "diffusers": save(first, folder / "a-diffusers.safetensors", fmt="diffusers"),
        "second": save(second, folder / "b.safetensors")})


def side_by_side(bases, paths, weights):  # noqa: F811
    """Images with the LoRAs loaded together by diffusers, each at its weight."""
    pipe = fresh(bases, "sd15")
    for i, path in enumerate(paths):
        pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
    pipe.set_adapters([f"l{i}" for i in range(len(paths))], weights)
    return generate(pipe)


def test_a_merged_file_gives_the_images_of_the_loras_loaded_together(cli, tmp_path, sd15_pair):
    out = tmp_path / "merged.safetensors"
    cli("lora", "merge", sd15_pair.kohya, sd15_pair.second, "--weights", 0.8, 0.6, "--out", out)
    pipe = fresh(sd15_pair.bases, "sd15")
    pipe.load_lora_weights(str(out))
    np.testing.assert_allclose(generate(pipe), side_by_side(sd15_pair.bases, [sd15_pair.kohya, sd15_pair.second],
                                                            [0.8, 0.6]), atol=2e-4)
    info = describe_lora(out)
    assert info["modules"]["te1"] > 0 and info["ranks"] == [2, 6]  # 4 + 2 where both adapt a module


def test_diffusers_files_merge_in_their_own_layout(cli, tmp_path, sd15_pair):
    out = tmp_path / "twice.safetensors"
    cli("lora", "merge", sd15_pair.diffusers, sd15_pair.diffusers, "--weights", 0.3, 0.2, "--out", out)
    assert describe_lora(out)["format"] == "diffusers"
    pipe = fresh(sd15_pair.bases, "sd15")
    pipe.load_lora_weights(str(out))
    np.testing.assert_allclose(generate(pipe), side_by_side(sd15_pair.bases, [sd15_pair.diffusers], [0.5]),
                               atol=2e-4)


def test_files_of_different_layouts_merge_as_in_one_layout(cli, tmp_path, sd15_pair):
    """A diffusers-layout file merged with a kohya one is written in the first file's layout and
    holds what the merge of the two in kohya's layout holds."""
    kohya = tmp_path / "kohya.safetensors"
    cli("lora", "merge", sd15_pair.kohya, sd15_pair.second, "--weights", 0.8, 0.6, "--out", kohya)
    mixed = tmp_path / "mixed.safetensors"
    text = cli("lora", "merge", sd15_pair.diffusers, sd15_pair.second, "--weights", 0.8, 0.6, "--out", mixed)[1]
    assert "(diffusers, the first file's layout)" in text and text.rstrip().endswith(f"{sd15_pair.second} (kohya)")
    assert describe_lora(mixed)["format"] == "diffusers"
    back = convert_file(mixed, "kohya", tmp_path / "back.safetensors")["path"]
    want, got = load_file(kohya), load_file(back)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)
    pipe = fresh(sd15_pair.bases, "sd15")
    pipe.load_lora_weights(str(mixed))
    np.testing.assert_allclose(generate(pipe), side_by_side(sd15_pair.bases, [sd15_pair.kohya, sd15_pair.second],
                                                            [0.8, 0.6]), atol=2e-4)


def test_sdxl_files_with_ldm_and_diffusers_unet_names_merge(cli, files):
    """sd-scripts names SDXL's UNet modules the LDM way, other kohya writers the diffusers way:
    one of each merges as two of the first one's naming do, and keeps its keys."""
    folder, _, _ = files
    unet = {"lora_unet_down_blocks_0_resnets_0_conv1": (32, 32, 3),  # adjacent LDM levels, as real files
            "lora_unet_down_blocks_0_resnets_1_conv1": (32, 32, 3),  # have them: the numbering is read from them
            "lora_unet_down_blocks_1_attentions_1_transformer_blocks_1_attn2_to_k": (64, 48),
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj": (256, 64),
            "lora_unet_up_blocks_0_attentions_2_proj_in": (64, 64, 1)}
    a = kohya_file(folder / "xa.safetensors", seed=1, family="sdxl", modules=unet)
    b = kohya_file(folder / "xb.safetensors", rank=4, alpha=1.0, seed=2, family="sdxl", modules=unet)
    ldm = convert_file(convert_file(b, "diffusers", folder / "xb-d.safetensors")["path"], "kohya",
                       folder / "xb-ldm.safetensors")["path"]
    assert (describe_lora(b)["unet_names"], describe_lora(ldm)["unet_names"]) == ("diffusers", "ldm")
    cli("lora", "merge", a, ldm, "--weights", 0.7, -0.4, "--out", folder / "mixed.safetensors")
    cli("lora", "merge", a, b, "--weights", 0.7, -0.4, "--out", folder / "same.safetensors")
    mixed, same = load_file(folder / "mixed.safetensors"), load_file(folder / "same.safetensors")
    assert mixed.keys() == same.keys() and all(torch.equal(mixed[k], same[k]) for k in same)
    summed, got = weighted_sum([a, b], [0.7, -0.4]), deltas(folder / "mixed.safetensors")
    assert got.keys() == summed.keys() == {k.removesuffix(".lora_down.weight") for k in load_file(a)
                                           if k.endswith(".lora_down.weight")}
    for module in summed:
        assert_near(got[module], summed[module])
    cli("lora", "merge", ldm, a, "--out", folder / "ldm-first.safetensors")
    assert describe_lora(folder / "ldm-first.safetensors")["unet_names"] == "ldm"


def test_merged_into_the_base_gives_its_images_with_the_lora(cli, tmp_path, sd15_pair):
    out = tmp_path / "pipeline"
    text = cli("lora", "merge", sd15_pair.kohya, sd15_pair.second, "--into", sd15_pair.bases["sd15"],
               "--weights", 0.8, -0.5, "--out", out)[1]
    assert f"diffusers pipeline in {out}" in text and (out / "model_index.json").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(generate(pipe), side_by_side(sd15_pair.bases, [sd15_pair.kohya, sd15_pair.second],
                                                            [0.8, -0.5]), atol=2e-4)
    assert not list(tmp_path.glob(".pipeline.*"))
    assert "already exists" in cli.fails("lora", "merge", sd15_pair.kohya, "--into", sd15_pair.bases["sd15"],
                                         "--out", out)


def test_a_zimage_lora_merged_into_its_base_gives_its_images(cli, tmp_path, tiny_flow):
    """A flow-matching family too: a Z-Image LoRA (ComfyUI's layout), fused into the tiny Z-Image
    at 0.7. (diffusers' Flux loader splits BFL's fused single-block linears at FLUX.1's real sizes,
    so a tiny Flux file does not load there.)"""
    from diffusers import ZImagePipeline
    from test_bfl_names import _trained
    from test_train_flow import _images

    from lora_lab.training.base_model import load_base_model
    from lora_lab.training.lora_file import save_lora

    denoiser, _ = _trained(tiny_flow, "zimage", "attn")
    path = save_lora(tmp_path / "zimage.safetensors", denoiser, [], family="zimage", dtype=torch.float32,
                     metadata=ss_metadata(family="zimage", network_dim=4, network_alpha=2))
    out = tmp_path / "zimage-merged"
    cli("lora", "merge", path, "--into", tiny_flow["zimage"], "--weights", 0.7, "--out", out)
    merged = ZImagePipeline.from_pretrained(out)
    merged.set_progress_bar_config(disable=True)
    base = load_base_model(str(tiny_flow["zimage"]), "zimage").pipeline
    plain = _images(base)
    base.load_lora_weights(str(path), adapter_name="l")
    base.set_adapters(["l"], [0.7])
    with_lora = _images(base)
    assert np.abs(with_lora - plain).max() > 1e-3
    np.testing.assert_allclose(_images(merged), with_lora, atol=2e-4)
