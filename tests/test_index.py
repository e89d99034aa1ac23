"""The index: paging (against a plain Python reference, at any offset, after any change), filtering,
staying in step with the files, rebuilding, migrating an old index file; stats; thumbnails."""
from __future__ import annotations

import json
import random
import shutil
import sqlite3

import pytest
from conftest import jpeg_bytes
from PIL import Image

from lora_lab.datasets import Dataset, ingest
from lora_lab.datasets import index as index_module
from lora_lab.datasets.captions import split_tags
from lora_lab.datasets.index import SCHEMA_VERSION, SORTS, ImageQuery, Index
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


# -- paging against a plain Python reference -----------------------------------------------------
VOCAB = ["sky", "blue  sky", "grass", "cat", "Dog", "red dress", "dress", "émile", "ÉMILE", "50%_off",
         "back\\slash"]


def made_up_rows(count: int, seed: int = 7) -> list[dict]:
    """Index rows with many ties on every sort key, captions of tags, of prose and none, cut
    captions and near-duplicates; file names in no particular order of insertion."""
    rng = random.Random(seed)
    rows = []
    for i in rng.sample(range(count * 3), count):
        width, height = rng.choice([(64, 64), (64, 32), (32, 64), (48, 48), (100, 75)])
        kind = rng.random()
        caption = (None if kind < 0.25 else "" if kind < 0.3 else
                   ", ".join(rng.sample(VOCAB, rng.randint(1, 4))) if kind < 0.75 else
                   "A photo of a " + " ".join(rng.sample(VOCAB, 3)) + ".")
        rows.append({"file": f"f{i:04d}.{rng.choice(['jpg', 'png'])}", "width": width, "height": height,
                     "format": "JPEG", "orientation": 1, "sha256": f"{i:064x}", "phash": f"{i:016x}",
                     "bytes": rng.choice([1000, 2000, 3000, rng.randint(1, 9999)]),
                     "mtime_ns": rng.choice([5, 6, rng.randint(1, 10**12)]),
                     "caption": caption, "caption_mtime_ns": 1 if caption is not None else None,
                     "caption_truncated": int(bool(caption) and rng.random() < 0.2)})
    for row in rng.sample(rows, count // 20):  # near-duplicates of other images
        row["near_dup_of"] = rng.choice(rows)["file"]
    return rows


def reference(rows: list[dict], view: ImageQuery) -> list[str]:
    """The files ``view`` selects, in its order, computed without SQL."""
    lower = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")  # LIKE: ASCII only
    originals = {r["near_dup_of"] for r in rows if r.get("near_dup_of")}

    def keep(r: dict) -> bool:
        caption = r["caption"] or ""
        q = (view.q or "").translate(lower)
        return ((not view.q or q in r["file"].translate(lower) or q in caption.translate(lower))
                and (not view.tag or " ".join(view.tag.split()) in split_tags(caption))
                and view.captioned in (None, bool(caption))
                and view.truncated in (None, r["caption_truncated"] == 1)
                and (view.shape is None or {"portrait": r["height"] > r["width"], "square": r["width"] == r["height"],
                                            "landscape": r["width"] > r["height"]}[view.shape])
                and min(r["width"], r["height"]) >= view.min_side
                and (not view.duplicates or bool(r.get("near_dup_of")) or r["file"] in originals))

    keys = {"file": lambda r: 0, "pixels": lambda r: r["width"] * r["height"],
            "aspect": lambda r: r["width"] / r["height"], "bytes": lambda r: r["bytes"],
            "caption": lambda r: len(r["caption"] or ""), "modified": lambda r: r["mtime_ns"]}
    key, desc = keys[view.sort.removeprefix("-")], view.sort.startswith("-")
    picked = sorted((r for r in rows if keep(r)), key=lambda r: r["file"], reverse=desc and view.sort == "-file")
    picked.sort(key=key, reverse=desc)  # stable: ties stay in file order
    if view.duplicates:
        picked.sort(key=lambda r: r.get("near_dup_of") or r["file"])
    return [r["file"] for r in picked]


SORT_KEYS = [s for name in SORTS for s in (name, "-" + name)]
FILTERS = [{}, {"q": "SKY"}, {"q": "émile"}, {"q": "ÉMILE"}, {"q": "50%_"}, {"q": "K\\S"}, {"q": "_"},
           {"q": "F01"}, {"q": "G\nA"}, {"q": "sky", "captioned": True}, {"tag": "blue sky"}, {"tag": "dress"},
           {"captioned": True}, {"captioned": False}, {"truncated": True}, {"truncated": False},
           {"shape": "landscape", "min_side": 40}, {"duplicates": True},
           {"tag": "sky", "captioned": True, "shape": "square"}]


@pytest.fixture(scope="module")
def made_up(tmp_path_factory) -> tuple[Index, list[dict]]:
    rows = made_up_rows(300)
    index = Index(tmp_path_factory.mktemp("index") / "index.sqlite")
    index.upsert(rows)
    yield index, rows
    index.close()


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "all")
def test_every_sort_pages_as_the_reference_orders(made_up, filters, monkeypatch):
    index, rows = made_up
    if filters.get("tag"):  # a rare tag's rows are sorted outright; a common one's walked to
        monkeypatch.setattr(index_module, "FEW_TAGGED", 0)
        check_pages(index, rows, filters)
        monkeypatch.undo()
    check_pages(index, rows, filters)


def check_pages(index: Index, rows: list[dict], filters: dict) -> None:
    for sort in SORT_KEYS:
        view = ImageQuery(**filters, sort=sort)
        want = reference(rows, view)
        assert index.files(view) == want, sort
        last = max(len(want) - 1, 0) // 7 * 7
        # a query new to the index: first, middle and last page, each from nothing remembered
        for offset in (0, last // 2, last, len(want) + 3):
            index.upsert(rows[:1])  # the same row again: a change, so nothing is remembered
            assert index.page(offset, 7, view) == ([index.get(f) for f in want[offset:offset + 7]],
                                                   len(want)), (sort, offset)
        # then walked page by page, forwards and backwards, from what earlier pages found
        pages = [index.page(o, 7, view)[0] for o in range(0, len(want), 7)]
        back = [index.page(o, 7, view)[0] for o in reversed(range(0, len(want), 7))]
        assert [r["file"] for p in pages for r in p] == want
        assert [r["file"] for p in reversed(back) for r in p] == want


def test_pages_follow_every_change_to_the_index(tmp_path):
    rows = made_up_rows(120, seed=3)
    index, other = Index(tmp_path / "index.sqlite"), Index(tmp_path / "index.sqlite")
    index.upsert(rows)
    views = [ImageQuery(sort="-bytes"), ImageQuery(tag="cat"), ImageQuery(tag="dress", captioned=True),
             ImageQuery(q="dress", sort="caption"), ImageQuery(q="NEW", sort="-bytes"),
             ImageQuery(truncated=True, sort="pixels"), ImageQuery(duplicates=True)]

    def check() -> None:  # both Index objects (two requests, say) see the index as it is now
        tagged = index.db.execute("SELECT tag, file FROM tags JOIN images ON image = images.rowid")
        assert {tuple(r) for r in tagged} == {(t, r["file"]) for r in index.all()
                                              for t in split_tags(r["caption"] or "")}
        for view in views:
            want = reference(rows, view)
            for idx in (index, other):
                for offset in range(0, len(want) + 1, 10):
                    page, total = idx.page(offset, 10, view)
                    assert ([r["file"] for r in page], total) == (want[offset:offset + 10], len(want)), view

    check()
    by_file = {r["file"]: r for r in rows}
    edited = [r["file"] for r in rows[:30]]
    other.set_captions([(f, "cat, dress, new tag", 9, {"truncated": f.endswith(".png")}) for f in edited])
    for f in edited:
        by_file[f].update(caption="cat, dress, new tag", caption_truncated=int(f.endswith(".png")))
    check()
    other.set_caption(edited[0], None, None)  # a caption removed by hand: no tag, not truncated
    by_file[edited[0]].update(caption=None, caption_truncated=0)
    check()
    with sqlite3.connect(tmp_path / "index.sqlite") as elsewhere:  # another process's write
        elsewhere.execute("UPDATE images SET caption = 'a new dress' WHERE file = ?", (edited[1],))
        elsewhere.execute("DELETE FROM tags WHERE image = (SELECT rowid FROM images WHERE file = ?)",
                          (edited[1],))
        elsewhere.execute("INSERT INTO tags SELECT 'a new dress', rowid FROM images WHERE file = ?",
                          (edited[1],))
        elsewhere.execute("UPDATE meta SET value = value + 1 WHERE key = 'changes'")
    elsewhere.close()
    by_file[edited[1]].update(caption="a new dress")
    check()
    gone = [r["file"] for r in rows[30:40]]
    index.delete(gone)
    rows = [r for r in rows if r["file"] not in gone]
    check()
    # images changed on disk: indexed anew, their captions (and tags) gone until re-read
    bigger = [{**r, "bytes": r["bytes"] + 10_000, "caption": None, "caption_truncated": None}
              for r in rows[:5]]
    other.upsert(bigger)
    rows = bigger + rows[5:]
    check()


def test_a_rebuilt_index_file_is_never_taken_for_the_one_before(tmp_path):
    rows = made_up_rows(60, seed=4)
    index = Index(tmp_path / "index.sqlite")
    index.upsert(rows)
    view = ImageQuery(sort="-pixels")
    assert index.page(0, 10, view)[1] == 60
    index.close()
    for p in tmp_path.glob("index.sqlite*"):  # as `dataset reindex` does
        p.unlink()
    again = Index(tmp_path / "index.sqlite")
    again.upsert(rows[:20])
    assert [r["file"] for r in again.page(0, 10, view)[0]] == reference(rows[:20], view)[:10]


# -- an index file from the version before -------------------------------------------------------
OLD_SCHEMA = """
CREATE TABLE images (file TEXT PRIMARY KEY, width INTEGER NOT NULL, height INTEGER NOT NULL,
    format TEXT NOT NULL, orientation INTEGER NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL,
    phash TEXT NOT NULL, mtime_ns INTEGER NOT NULL, caption TEXT, caption_mtime_ns INTEGER,
    near_dup_of TEXT, caption_model TEXT, caption_prompt TEXT);
CREATE INDEX images_sha256 ON images(sha256);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""


def test_an_index_from_the_version_before_opens_and_gains_what_is_new(ws, ds):
    rows = ds.index.all()
    ds.index.close()
    for p in ds.meta_dir.glob("index.sqlite*"):
        p.unlink()
    old = sqlite3.connect(ds.meta_dir / "index.sqlite")
    old.executescript(OLD_SCHEMA)
    cols = [c for c in rows[0] if c != "caption_truncated"]
    old.executemany(f"INSERT INTO images ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [[r[c] for c in cols] for r in rows])
    old.execute("INSERT INTO meta VALUES ('dir_mtime_ns', ?)", (str(ds.path.stat().st_mtime_ns),))
    old.commit()
    old.close()

    again = Dataset.open("shapes", ws)
    assert again.index.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r["file"] for r in again.images(tag="blue sky").items] == ["cyan_square.jpg"]
    assert again.images(truncated=True).total == 0 and again.images(truncated=False).total == 8
    assert {r["caption_truncated"] for r in again.index.all()} == {None}
    assert [r["file"] for r in again.images(sort="-caption").items] == reference(
        again.index.all(), ImageQuery(sort="-caption"))
    Dataset.open("shapes", ws).index.close()  # opened again: nothing left to migrate


# -- captions cut at the token limit ---------------------------------------------------------------
def test_truncated_captions_are_marked_filtered_and_survive_a_reindex(cli, ws, ds):
    entry = ds.journal.begin("caption test")
    for file, cut in (("purple_square.jpg", True), ("white_circle.webp", False)):
        assert ds.write_caption(entry, file, None, "a long caption that stops in the mid",
                                {"model": "tiny", "prompt": "describe", **({"truncated": True} if cut else {})})
    entry.finish()
    assert [r["file"] for r in ds.images(truncated=True).items] == ["purple_square.jpg"]
    assert ds.image("purple_square.jpg")["caption_truncated"] == 1
    assert ds.images(truncated=False).total == 7 and ds.images(truncated=True, captioned=True).total == 1
    out = json.loads(cli("dataset", "images", "shapes", "--truncated", "--json")[1])
    assert [r["file"] for r in out["items"]] == ["purple_square.jpg"]
    assert json.loads(cli("dataset", "images", "shapes", "--not-truncated", "--json")[1])["total"] == 7

    cli("dataset", "reindex", "shapes")  # the flag is read back from the sources log
    again = Dataset.open("shapes", ws)
    assert [r["file"] for r in again.images(truncated=True).items] == ["purple_square.jpg"]
    again.set_caption("purple_square.jpg", "finished by hand")  # a hand edit: no longer cut
    assert again.images(truncated=True).total == 0
    for bad in ("yes", 1, 0):
        with pytest.raises(LoraLabError, match="truncated must be true, false or unset"):
            again.images(truncated=bad)
