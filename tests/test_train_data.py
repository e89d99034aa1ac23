"""Training data: sources, buckets, the batch plan's order, caption rules, the latent cache."""
from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
import torch
from conftest import jpeg_bytes

from lora_lab.training.data import BatchPlan, CaptionRules, assign_buckets, gather_images
from lora_lab.training.latents import LatentEncoder


@pytest.fixture
def kohya(tmp_path):
    for folder, sizes in {"3_sks woman": [(192, 64), (64, 192)], "1_woman": [(64, 64)] * 3}.items():
        d = tmp_path / "train" / folder
        d.mkdir(parents=True)
        for i, size in enumerate(sizes):
            (d / f"{i}.jpg").write_bytes(jpeg_bytes(size, seed=hash((folder, i)) % 1000))
            (d / f"{i}.txt").write_text(f"tag{i}, red, blue")
    return tmp_path / "train"


def test_a_kohya_folder_repeats_each_subfolder(kohya):
    images = gather_images(str(kohya))
    assert Counter((img.folder, img.repeats) for img in images) == {("3_sks woman", 3): 2,
                                                                   ("1_woman", 1): 3}
    assert all(img.caption.startswith("tag") and len(img.sha256) == 64 for img in images)


def test_a_lora_lab_dataset_by_name(cli, ws, samples):
    cli("dataset", "ingest", samples, "--name", "shapes")
    images = gather_images("shapes", repeats=2, workspace=ws)
    assert len(images) == 8 and {img.repeats for img in images} == {2}
    assert sum(bool(img.caption) for img in images) == 5


@pytest.mark.parametrize("world", [1, 2])
def test_every_epoch_shows_each_image_repeats_times_in_single_bucket_batches(kohya, world):
    images = gather_images(str(kohya))
    buckets = assign_buckets(images, 128, 64, 256)
    assert len(set(buckets)) == 3  # landscape, portrait, square
    plan = BatchPlan(images, buckets, batch_size=2, seed=1, world=world)
    assert plan.batches_per_epoch % world == 0
    rules = CaptionRules()
    for epoch in range(3):
        batches = [plan.samples(epoch * plan.batches_per_epoch + k, rules)
                   for k in range(plan.batches_per_epoch)]
        assert all(len({buckets[s.image] for s in b}) == 1 for b in batches)
        seen = Counter(s.image for b in batches for s in b)
        assert all(seen[i] >= img.repeats for i, img in enumerate(images))
        if world == 1:
            assert seen == {i: img.repeats for i, img in enumerate(images)}
    again = BatchPlan(images, buckets, batch_size=2, seed=1, world=world)
    assert again.samples(5, rules) == plan.samples(5, rules)  # the same in a new process
    orders = {tuple(s.image for k in range(plan.batches_per_epoch)
                    for s in plan.samples(e * plan.batches_per_epoch + k, rules)) for e in range(4)}
    assert len(orders) > 1  # shuffled per epoch


def test_caption_rules():
    rng = random.Random(0)
    assert CaptionRules(trigger="sks").caption("red, blue", rng) == "sks, red, blue"
    assert CaptionRules(trigger="sks").caption("blue, sks", rng) == "sks, blue"
    assert CaptionRules(trigger="sks").caption("", rng) == "sks"
    assert CaptionRules(caption_dropout=1.0).caption("red", rng) == ""
    shuffled = {CaptionRules(trigger="sks", shuffle_tags=True, keep_tokens=1)
                .caption("a, b, c, d, e", random.Random(seed)) for seed in range(20)}
    assert len(shuffled) > 5 and all(c.startswith("sks, ") for c in shuffled)
    assert all(sorted(c.split(", ")) == sorted("sks a b c d e".split()) for c in shuffled)
    dropped = CaptionRules(keep_tokens=2, tag_dropout=1.0).caption("a, b, c, d", rng)
    assert dropped == "a, b"
    assert CaptionRules(shuffle_tags=True).randomised and not CaptionRules(trigger="x").randomised


def test_latent_cache_hits_and_invalidation(tiny_models, tmp_path, kohya):
    from lora_lab.training.base_model import load_base_model

    vae = load_base_model(str(tiny_models["sd15"]), "sd15").vae
    images = gather_images(str(kohya))
    img, bucket = images[0], (64, 64)
    cache = LatentEncoder(vae, tmp_path / "cache")
    first = cache.params(img, bucket, False)
    assert torch.equal(first, LatentEncoder(vae, None).params(img, bucket, False))  # as uncached
    again = LatentEncoder(vae, tmp_path / "cache")
    assert torch.equal(again.params(img, bucket, False), first) and again.hits == 1
    again.params(img, bucket, True)  # flipped: another entry
    again.params(img, (64, 128), False)  # another bucket: another entry
    assert again.misses == 2
    for f in (tmp_path / "cache").rglob("*.pt"):  # a torn file is re-encoded, not trusted
        f.write_bytes(f.read_bytes()[:10])
    assert torch.equal(LatentEncoder(vae, tmp_path / "cache").params(img, bucket, False), first)
    with torch.no_grad():
        vae.encoder.conv_in.bias.add_(0.1)  # another VAE: a new fingerprint, a miss
    other = LatentEncoder(vae, tmp_path / "cache")
    assert not torch.equal(other.params(img, bucket, False), first) and other.misses == 1
    edited = dataclasses.replace(img, sha256="0" * 64)  # the image's bytes changed
    other.params(edited, bucket, False)
    assert other.misses == 2
