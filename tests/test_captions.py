"""Caption get/set, bulk operations and the undo journal, through the CLI and the Python API."""
from __future__ import annotations

import json

import pytest

from lora_lab.datasets import Dataset, etag
from lora_lab.datasets import captions as ops
from lora_lab.errors import Conflict, LoraLabError, NotFound


@pytest.fixture
def ds(cli, ws, samples) -> Dataset:
    cli("dataset", "ingest", samples, "--name", "shapes")
    return Dataset.open("shapes", ws)


def captions(ds: Dataset) -> dict:
    return {r["file"]: ds.caption(r["file"]) for r in ds.index.all()}


@pytest.mark.parametrize("fn, args, before, after", [
    (ops.prefix, ("sks",), "a cat, grass", "sks, a cat, grass"),
    (ops.prefix, ("sks",), "a cat, sks, grass", "sks, a cat, grass"),
    (ops.prefix, ("sks",), "", "sks"),
    (ops.replace, ("cat", "dog"), "a cat, cats", "a dog, dogs"),
    (ops.regex_replace, (r"\bcat\b", "dog"), "a cat, cats", "a dog, cats"),
    (ops.add_tags, (["sky", "cat"],), "cat,  grass", "cat, grass, sky"),
    (ops.remove_tags, (["grass"],), "cat, grass, sky", "cat, sky"),
    (ops.dedupe_tags, (), "cat, sky, cat", "cat, sky"),
    (ops.normalize, (), " cat ,,  big   sky ,", "cat, big sky"),
])
def test_caption_operations(fn, args, before, after):
    assert fn(before, *args) == after


@pytest.mark.parametrize("bad, message", [
    ([], "no caption operation"),
    ([{"op": "explode"}], "unknown caption operation"),
    ([{"op": "replace", "old": "a"}], "needs new"),
    ([{"op": "regex", "pattern": "(", "new": ""}], "invalid regular expression"),
    ([{"op": "add_tags", "tags": " , "}], "at least one tag"),
    ([{"op": "prefix", "text": "  "}], "non-empty text"),
])
def test_bad_operations_are_refused_before_any_write(ds, bad, message):
    before = captions(ds)
    with pytest.raises(LoraLabError, match=message):
        ds.edit(bad)
    assert captions(ds) == before and ds.journal.last() is None


def test_get_and_set_one_caption_through_the_cli(cli, ds):
    assert cli("dataset", "caption", "shapes", "red_circle.jpg")[1].strip() == \
        "a red circle above green grass"
    cli("dataset", "caption", "shapes", "purple_square.jpg", "  a purple square  ")
    assert (ds.path / "purple_square.txt").read_text(encoding="utf-8") == "a purple square"
    out = json.loads(cli("dataset", "caption", "shapes", "purple_square.jpg", "--json")[1])
    assert out == {"file": "purple_square.jpg", "caption": "a purple square"}
    assert not list(ds.path.glob(".*.tmp")) and not list(ds.path.glob("*.tmp"))


def test_bulk_edit_and_exact_undo(cli, ds):
    original = captions(ds)
    rc, out, _ = cli("dataset", "edit", "shapes", "--prefix", "sks", "--replace", "circle", "ring",
                     "--add-tags", "simple, shapes", "--dedupe", "--normalize")
    assert "changed 8 of 8" in out
    edited = captions(ds)
    assert edited["red_circle.jpg"] == "sks, a red ring above green grass, simple, shapes"
    assert edited["purple_square.jpg"] == "sks, simple, shapes"  # uncaptioned images get it too
    assert "changed 0 of 8" in cli("dataset", "edit", "shapes", "--normalize")[1]
    cli("dataset", "edit", "shapes", "--undo")
    assert captions(ds) == original
    assert not (ds.path / "purple_square.txt").exists()  # the file it created is gone again


def test_edit_a_selection_by_files_or_query(cli, ds):
    cli("dataset", "edit", "shapes", "--add-tags", "round", "-q", "circle")
    round_ = {f for f, c in captions(ds).items() if c and "round" in c}
    assert round_ == {"red_circle.jpg", "green_circle.jpg", "white_circle.webp"}
    cli("dataset", "edit", "shapes", "--remove-tags", "round", "--files", "red_circle.jpg")
    assert "round" not in captions(ds)["red_circle.jpg"]
    assert "not in dataset" in cli.fails("dataset", "edit", "shapes", "--dedupe", "--files", "nope.jpg")


def test_undo_goes_back_step_by_step_and_then_says_so(cli, ds):
    original = captions(ds)
    cli("dataset", "edit", "shapes", "--prefix", "one")
    cli("dataset", "caption", "shapes", "red_circle.jpg", "by hand")
    history = json.loads(cli("dataset", "edit", "shapes", "--history", "--json")[1])
    assert [h["label"] for h in history] == ["set red_circle.jpg", "prefix 'one'"]
    cli("dataset", "edit", "shapes", "--undo")
    assert ds.caption("red_circle.jpg") == "one, a red circle above green grass"
    cli("dataset", "edit", "shapes", "--undo")
    assert captions(ds) == original
    assert "nothing to undo" in cli.fails("dataset", "edit", "shapes", "--undo")


def test_undo_refuses_to_overwrite_a_later_hand_edit(ds):
    ds.edit([{"op": "prefix", "text": "sks"}])
    (ds.path / "red_circle.txt").write_text("edited in another tool")
    with pytest.raises(Conflict, match="changed since"):
        ds.undo()
    assert (ds.path / "red_circle.txt").read_text() == "edited in another tool"
    assert ds.caption("green_circle.jpg").startswith("sks")  # nothing reverted at all


def test_set_caption_with_if_match_refuses_a_lost_update(ds):
    first = ds.caption("red_circle.jpg")
    tag = etag(first)
    ds.set_caption("red_circle.jpg", "writer one", if_match=tag)
    with pytest.raises(Conflict, match="changed since you read it"):
        ds.set_caption("red_circle.jpg", "writer two", if_match=tag)
    assert ds.caption("red_circle.jpg") == "writer one"
    assert etag(None) == "none" and ds.set_caption("purple_square.jpg", "new", if_match="none")


@pytest.mark.parametrize("name", ["../../etc/passwd", "sub/x.jpg", ".lora_lab", "", "red_circle.txt"])
def test_image_names_cannot_escape_the_dataset(ds, name):
    with pytest.raises((LoraLabError, NotFound)):
        ds.caption(name)


def test_symlinked_image_pointing_out_is_refused(ds, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((ds.path / "red_circle.jpg").read_bytes())
    (ds.path / "sneaky.jpg").symlink_to(outside)
    with pytest.raises(LoraLabError, match="outside"):
        ds.set_caption("sneaky.jpg", "x")


def test_non_utf8_caption_on_disk_is_a_clear_error(cli, ds):
    (ds.path / "red_circle.txt").write_bytes(b"\xff\xfe broken")
    msg = cli.fails("dataset", "caption", "shapes", "red_circle.jpg")
    assert "not UTF-8" in msg and "red_circle.txt" in msg


@pytest.mark.parametrize("caption, prose", [
    ("1girl, solo, long hair, looking at viewer", False),
    ("green circle, grass, sky.", False),  # a stray period does not make tags prose
    ("sks, a photo of a dog, outdoors", False),
    ("score 1.5 ratio, x", False),
    ("A red car.", True),
    ("A dog sits on the grass, looking up at the camera, with a red collar.", True),
    ("a blue square floating in a clear sky", True),  # no period, but far too long for a tag
    ("", False),
])
def test_sentence_captions_are_told_from_tags(caption, prose):
    assert ops.is_sentence_caption(caption) is prose
    assert ops.caption_tags(caption) == ([] if prose else ops.split_tags(caption))


def test_tags_are_counted_per_image_and_completed_from_a_prefix():
    from lora_lab.datasets.tags import TagIndex, tag_counts

    captions = ["red, red, ball", "red, long hair", "A red ball lies on the grass.", None, "Long Hat"]
    assert tag_counts(captions) == {"red": 2, "ball": 1, "long hair": 1, "Long Hat": 1}
    tags = TagIndex(captions)
    assert tags.complete("re") == [("red", 2)]
    assert tags.complete("  LONG  h") == [("Long Hat", 1), ("long hair", 1)]  # ties by name
    assert tags.complete("hai") == [("long hair", 1)]  # a later word's start finds it too
    assert tags.complete("", 2) == [("red", 2), ("Long Hat", 1)]
    assert tags.complete("", 2, exclude=["red"]) == [("Long Hat", 1), ("ball", 1)]
    assert tags.complete("zz") == [] and tags.top(1) == [("red", 2)]
    tags.replace("red, long hair", "red, long hair, long hair, hat")  # one caption edited
    tags.replace("red, red, ball", None)  # one caption removed
    assert tags.counts == {"red": 1, "long hair": 1, "Long Hat": 1, "hat": 1}
    assert tags.complete("ha") == [("hat", 1), ("Long Hat", 1), ("long hair", 1)]  # its start first
    assert tags.complete("ba") == [] and len(tags) == 4
