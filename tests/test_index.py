"""The index: paging, filtering, staying in step with the files, rebuilding; stats; thumbnails."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import jpeg_bytes
from PIL import Image

from lora_lab.datasets import Dataset, ingest
from lora_lab.datasets.stats import dataset_stats
from lora_lab.datasets.thumbs import build_thumbnails, thumbnail_path
from lora_lab.errors import LoraLabError


@pytest.fixture
def ds(cli, ws, samples) -> Dataset:
    cli("dataset", "ingest", samples, "--name", "shapes")
    return Dataset.open("shapes", ws)


def test_pages_cover_everything_in_order(ws, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"{i:03d}.jpg").write_bytes(jpeg_bytes((16, 16), seed=i))
    ds = Dataset.open(ingest(src, "paged", workspace=ws).dataset, ws)
    seen = []
    for offset in range(0, 30, 7):
        page = ds.images(offset, 7)
        assert page.total == 30
        seen += [r["file"] for r in page.items]
    assert seen == [f"{i:03d}.jpg" for i in range(30)]
    with pytest.raises(LoraLabError, match="limit"):
        ds.images(0, 0)


def test_filters_by_text_and_caption_state(cli, ds):
    assert {r["file"] for r in ds.images(q="circle").items} == {
        "red_circle.jpg", "green_circle.jpg", "white_circle.webp"}
    assert {r["file"] for r in ds.images(q="grass").items} == {"red_circle.jpg", "green_circle.jpg"}
    assert ds.images(captioned=False).total == 3 and ds.images(captioned=True).total == 5
    assert ds.images(q="100%_").total == 0  # LIKE wildcards are taken literally
    out = json.loads(cli("dataset", "images", "shapes", "--uncaptioned", "--json")[1])
    assert out["total"] == 3 and all(r["caption"] is None for r in out["items"])


def test_files_changed_by_hand_are_picked_up(ws, ds):
    shutil.copy(ds.path / "red_circle.jpg", ds.path / "copied.jpg")
    (ds.path / "copied.txt").write_text("added by hand")
    (ds.path / "blue_square.png").unlink()
    (ds.path / "cyan_square.txt").write_text("caption edited in the file browser")
    again = Dataset.open("shapes", ws)
    files = {r["file"] for r in again.index.all()}
    assert "copied.jpg" in files and "blue_square.png" not in files
    assert again.image("copied.jpg")["caption"] == "added by hand"
    assert again.images(q="file browser").total == 1


def test_reindex_rebuilds_the_same_index_from_the_files(cli, ds):
    before = {r["file"]: (r["sha256"], r["width"], r["caption"]) for r in ds.index.all()}
    (ds.meta_dir / "index.sqlite").write_bytes(b"garbage")  # even a ruined index
    cli("dataset", "reindex", "shapes")
    after = Dataset(ds.path)
    assert {r["file"]: (r["sha256"], r["width"], r["caption"]) for r in after.index.all()} == before


def test_stats(cli, ds):
    s = json.loads(cli("dataset", "show", "shapes", "--json")[1])
    assert (s["images"], s["captioned"], s["uncaptioned"]) == (8, 5, 3)
    assert s["formats"] == {"JPEG": 4, "PNG": 2, "WEBP": 2}
    assert sum(s["buckets"]["sd15"]["counts"].values()) == 8
    assert s["buckets"]["sd15"]["counts"]["512x512"] == 2
    assert s["buckets"]["sdxl"]["upscaled"] == 8  # every sample is smaller than 1024 px
    assert s["tags"]["sky"] == 1 and s["caption_words"]["max"] == 8
    assert "sd15 buckets (512px)" in cli("dataset", "show", "shapes")[1]
    assert dataset_stats(ds)["distinct_tags"] == s["distinct_tags"]


def test_thumbnails_are_cached_and_follow_content(cli, ds):
    rc, out, _ = cli("dataset", "thumbs", "shapes", "--size", "64")
    assert "made 8" in out and "made 0" in cli("dataset", "thumbs", "shapes", "--size", "64")[1]
    thumb = thumbnail_path(ds, "blue_square.png", 64)
    with Image.open(thumb) as im:
        assert im.size == (64, 48) and im.format == "JPEG"
    Image.new("RGB", (300, 600), "red").save(ds.path / "blue_square.png")  # content changes
    ds.sync()
    with Image.open(thumbnail_path(ds, "blue_square.png", 64)) as im:
        assert im.size == (32, 64)
    assert build_thumbnails(ds, 64) == 0
    with pytest.raises(LoraLabError, match="out of range"):
        thumbnail_path(ds, "blue_square.png", 5000)


def test_filters_by_shape_and_size_sorts_and_groups_duplicates(ws, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"a_wide.jpg": (64, 32), "b_tall.jpg": (20, 40), "c_square.jpg": (48, 48)}
    for i, (name, size) in enumerate(sizes.items()):
        (src / name).write_bytes(jpeg_bytes(size, seed=i))
    (src / "d_copy.jpg").write_bytes(jpeg_bytes((64, 32), seed=0, quality=60))
    ds = Dataset.open(ingest(src, "shaped", workspace=ws).dataset, ws)
    files = lambda **q: [r["file"] for r in ds.images(**q).items]  # noqa: E731
    assert files(shape="portrait") == ["b_tall.jpg"]
    assert files(shape="square") == ["c_square.jpg"]
    assert files(min_side=32) == ["a_wide.jpg", "c_square.jpg", "d_copy.jpg"]
    assert files(sort="-pixels")[:1] == ["c_square.jpg"] and files(sort="aspect")[0] == "b_tall.jpg"
    assert files(duplicates=True) == ["a_wide.jpg", "d_copy.jpg"]
    for bad in ({"shape": "round"}, {"sort": "colour"}, {"sort": 5}, {"min_side": -1}):
        with pytest.raises(LoraLabError, match=next(iter(bad))):
            ds.images(**bad)


def test_a_tag_filter_matches_whole_tags(ds):
    assert [r["file"] for r in ds.images(tag="sky").items] == ["green_circle.jpg"]
    assert [r["file"] for r in ds.images(tag="blue  sky").items] == ["cyan_square.jpg"]
    assert ds.images(q="sky").total == 3  # the text query still finds it inside other tags
    with pytest.raises(LoraLabError, match="tag must be text"):
        ds.images(tag=5)
