"""DatasetBrowser and CaptionEditor, in-process: set values, click buttons, read what the user
sees (tiles, counts, notices) and what landed on disk."""
from __future__ import annotations

import time

import pytest
from conftest import jpeg_bytes

from lora_lab.datasets import Dataset, ingest
from lora_lab.datasets.thumbs import cached_thumbnail
from lora_lab.errors import LoraLabError, NotFound
from lora_lab.widgets.browser import DatasetBrowser
from lora_lab.widgets.captions import CaptionEditor

FILES = ["blue_square.png", "cyan_square.jpg", "green_circle.jpg", "orange_triangle.png",
         "purple_square.jpg", "red_circle.jpg", "white_circle.webp", "yellow_triangle.webp"]
UNCAPTIONED = ["purple_square.jpg", "white_circle.webp", "yellow_triangle.webp"]


@pytest.fixture
def shapes(ws, samples) -> Dataset:
    ingest(samples, "shapes", workspace=ws)
    return Dataset.open("shapes", ws)


@pytest.fixture
def browser(ws, shapes) -> DatasetBrowser:
    b = DatasetBrowser("shapes", ws, page_size=3, thumb_size=64)
    b.wait_thumbnails(10)
    yield b
    b.close()


@pytest.fixture
def editor(browser) -> CaptionEditor:
    e = CaptionEditor(browser, autostart=False)
    yield e
    e.close()


def shown(browser: DatasetBrowser) -> list[str]:
    return [t.file for t in browser.tiles if t.layout.display != "none"]


def on_disk(ds: Dataset) -> dict[str, str | None]:
    return {f: ds.caption(f) for f in FILES}


# -- browser ---------------------------------------------------------------------------------------
def test_pages_show_thumbnails_and_captions_on_the_same_tiles(browser, shapes):
    tiles = list(browser.grid.children)
    assert shown(browser) == FILES[:3] and browser.range_label.value == "1-3 of 8"
    first = browser.tiles[0]
    assert first.caption_text == "a blue square floating in a clear sky"
    assert bytes(first.image.value) == cached_thumbnail(shapes, shapes.image(FILES[0]), 64).read_bytes()
    assert browser.prev_button.disabled and not browser.next_button.disabled
    browser.next_button.click()
    assert shown(browser) == FILES[3:6] and browser.range_label.value == "4-6 of 8"
    assert browser.tiles[1].caption_text == "" and "no caption" in browser.tiles[1].caption.value
    browser.next_button.click()
    assert shown(browser) == FILES[6:] and browser.range_label.value == "7-8 of 8"
    assert browser.next_button.disabled and browser.tiles[2].layout.display == "none"
    browser.prev_button.click()
    assert shown(browser) == FILES[3:6]
    assert list(browser.grid.children) == tiles  # reused, never rebuilt


def test_long_captions_are_shortened_under_the_tile(browser, shapes):
    long = "a very long caption " * 20
    shapes.set_caption(FILES[0], long)
    browser.refresh()
    text = browser.tiles[0].caption_text
    assert text.endswith(" …") and len(text) <= 92 and long.startswith(text[:-2])
    assert long.strip() in browser.tiles[0].caption.value  # the whole caption is the tooltip


def test_missing_thumbnails_are_made_and_filled_in(ws, samples):
    ds = Dataset.open(ingest(samples, "fresh", workspace=ws).dataset, ws)
    assert not (ds.meta_dir / "thumbs").exists()
    b = DatasetBrowser("fresh", ws, page_size=4, thumb_size=48)
    b.wait_thumbnails(10)
    for tile in b.tiles:
        thumb = cached_thumbnail(ds, ds.image(tile.file), 48)
        assert bytes(tile.image.value) == thumb.read_bytes()
    again = DatasetBrowser("fresh", ws, page_size=4, thumb_size=48)
    assert again._pending == []  # all cached now: nothing left to make
    b.close(), again.close()


def test_filters_from_the_controls(browser):
    browser.filters["q"].value = "circle"
    assert shown(browser) == ["green_circle.jpg", "red_circle.jpg", "white_circle.webp"]
    browser.filters["q"].value = ""
    browser.filters["captioned"].value = "uncaptioned"
    assert shown(browser) == UNCAPTIONED and browser.range_label.value == "1-3 of 3"
    browser.filters["captioned"].value = "all"
    browser.filters["shape"].value = "portrait"  # 448x576, 512x640, 384x512
    assert set(shown(browser)) == {"purple_square.jpg", "cyan_square.jpg", "yellow_triangle.webp"}
    browser.filters["shape"].value = "any shape"
    browser.filters["min_side"].value = 500
    assert browser.range_label.value == "1-3 of 3"  # red, orange (512x512), cyan (512x640)
    browser.filters["sort"].value = "-pixels"
    assert shown(browser)[0] == "cyan_square.jpg"
    browser.filters["q"].value = "no such thing"
    assert shown(browser) == [] and browser.range_label.value == "no images match these filters"
    assert browser.notice.text == ""


def test_show_sets_filters_and_near_duplicates(ws, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"img{i}.jpg").write_bytes(jpeg_bytes((64, 32), seed=i))
    (src / "z_copy.jpg").write_bytes(jpeg_bytes((64, 32), seed=0, quality=60))
    ingest(src, "dups", workspace=ws)
    b = DatasetBrowser("dups", ws, page_size=10, thumb_size=32)
    b.show(duplicates=True)
    assert shown(b) == ["img0.jpg", "z_copy.jpg"] and b.filters["duplicates"].value is True
    b.show(duplicates=False, sort="-file", captioned=False)
    assert shown(b) == ["z_copy.jpg", "img2.jpg", "img1.jpg", "img0.jpg"]
    assert b.filters["sort"].value == "-file" and b.filters["captioned"].value == "uncaptioned"
    b.close()


def test_bad_filter_values_change_nothing(browser):
    browser.show(q="square")
    before = (shown(browser), dict(browser.query))
    with pytest.raises(LoraLabError, match="shape must be one of portrait, landscape, square"):
        browser.show(shape="round")
    with pytest.raises(LoraLabError, match="unknown filter.*colour"):
        browser.show(colour="red")
    with pytest.raises(LoraLabError, match="captioned must be true, false or unset"):
        browser.show(captioned="yes")
    assert (shown(browser), browser.query) == before
    browser.filters["min_side"].value = -5  # typed at the control: a notice, not a traceback
    assert browser.notice.text == "min_side must be a whole number >= 0, not -5"
    assert browser.notice.kind == "error" and (shown(browser), browser.query) == before


def test_selection_across_pages(browser):
    browser.tiles[1].check.value = True
    assert browser.selected == ["cyan_square.jpg"] and browser.selection_label.value == "1 selected"
    browser.next_button.click()
    browser.tiles[0].check.value = True
    browser.prev_button.click()
    assert browser.tiles[1].check.value and not browser.tiles[0].check.value
    assert browser.selected == ["cyan_square.jpg", "orange_triangle.png"]
    browser.tiles[1].check.value = False
    assert browser.selected == ["orange_triangle.png"]
    browser.selected = ["blue_square.png"]  # set by code: the boxes follow
    assert [t.check.value for t in browser.tiles] == [True, False, False]
    browser.filters["captioned"].value = "uncaptioned"
    browser.select_all_button.click()  # every image the filters show, not just this page
    assert browser.selected == UNCAPTIONED and browser.selection_label.value == "3 selected"
    browser.clear_button.click()
    assert browser.selected == [] and not any(t.check.value for t in browser.tiles)


def test_open_and_step_through_pages(browser):
    browser.tiles[2].edit_button.click()
    assert browser.current == "green_circle.jpg" and browser.tiles[2].edit_button.button_style == "info"
    browser.step(1)  # past the page's end: the next page
    assert browser.current == "orange_triangle.png" and browser.range_label.value == "4-6 of 8"
    browser.step(-1)
    assert browser.current == "green_circle.jpg" and browser.range_label.value == "1-3 of 8"
    browser.step(-2)
    browser.step(-1)
    assert browser.current == "blue_square.png" and browser.notice.text == "no more images that way"


def test_a_dataset_that_does_not_exist(ws):
    with pytest.raises(NotFound, match="dataset 'nope' does not exist"):
        DatasetBrowser("nope", ws)
    with pytest.raises(LoraLabError, match="invalid dataset name"):
        DatasetBrowser("../escape", ws)


def test_an_empty_dataset(ws):
    Dataset.create("empty", ws)
    b = DatasetBrowser("empty", ws)
    assert shown(b) == [] and b.range_label.value == "no images in this dataset yet"
    assert b.next_button.disabled and b.prev_button.disabled
    b.select_all_button.click()
    assert b.selected == []
    e = CaptionEditor(b, autostart=False)
    assert e.header.value == "<i>no image open</i>" and e.text.disabled
    assert all(btn.layout.display == "none" for btn in e.tag_buttons)
    e.next_button.click()
    assert b.notice.text == "no more images that way"
    e.add_button.click()
    assert "no images selected" in e.notice.text
    e.close(), b.close()


# -- caption editor --------------------------------------------------------------------------------
def test_autosave_and_previous_next(browser, editor, shapes):
    browser.tiles[0].edit_button.click()
    assert editor.text.value == "a blue square floating in a clear sky"
    assert editor.header.value.startswith("<b>blue_square.png</b> 512x384")
    assert bytes(editor.preview.value)[:2] == b"\xff\xd8"
    editor.text.value = "a blue square, sky"
    assert shapes.caption("blue_square.png") == "a blue square, sky"
    assert browser.tiles[0].caption_text == "a blue square, sky" and editor.notice.kind == "ok"
    editor.next_button.click()
    assert browser.current == "cyan_square.jpg" and editor.text.value.startswith("cyan square")
    editor.prev_button.click()
    assert editor.text.value == "a blue square, sky"
    shapes.undo()  # the panel's edits are in the dataset's undo journal
    assert shapes.caption("blue_square.png") == "a blue square floating in a clear sky"


def test_an_edit_conflict_keeps_the_users_text(browser, editor, shapes):
    browser.tiles[0].edit_button.click()
    shapes.set_caption("blue_square.png", "changed elsewhere")  # another tab, the CLI, a job
    editor.text.value = "my careful edit"
    assert shapes.caption("blue_square.png") == "changed elsewhere"
    assert editor.text.value == "my careful edit" and editor.notice.kind == "warning"
    assert "changed since you opened it (now: 'changed elsewhere')" in editor.notice.text
    editor.text.value = "my careful edit, more"  # still refused: nothing overwritten unasked
    assert shapes.caption("blue_square.png") == "changed elsewhere"
    editor.save_button.click()  # the user chose: theirs over
    assert shapes.caption("blue_square.png") == "my careful edit, more"
    assert editor.notice.text == "saved blue_square.png"
    shapes.set_caption("blue_square.png", "again elsewhere")
    editor.reload_button.click()
    assert editor.text.value == "again elsewhere" and editor.notice.text == ""


def test_bulk_operations_on_the_selection_and_undo(browser, editor, shapes):
    before = on_disk(shapes)
    editor.trigger_text.value = "sks"
    editor.trigger_button.click()  # nothing selected: said, and nothing done
    assert "no images selected" in editor.notice.text and on_disk(shapes) == before
    browser.selected = ["blue_square.png", "green_circle.jpg"]
    browser.tiles[0].edit_button.click()
    editor.trigger_button.click()
    assert editor.notice.text == "prefix 'sks': changed 2 of 2 selected captions"
    assert shapes.caption("green_circle.jpg") == "sks, green circle, grass, sky"
    assert editor.text.value.startswith("sks, ") and browser.tiles[2].caption_text.startswith("sks, ")
    editor.find_text.value, editor.replace_text.value = "grass", "meadow"
    editor.replace_button.click()
    assert shapes.caption("green_circle.jpg") == "sks, green circle, meadow, sky"
    editor.find_text.value, editor.replace_text.value = r"\bsky\b", "sky blue"
    editor.regex_check.value = True
    editor.replace_button.click()
    assert shapes.caption("green_circle.jpg") == "sks, green circle, meadow, sky blue"
    editor.tags_text.value = "outdoors, simple"
    editor.add_button.click()
    assert shapes.caption("green_circle.jpg").endswith("sky blue, outdoors, simple")
    editor.tags_text.value = "simple, sks"
    editor.remove_button.click()
    assert shapes.caption("green_circle.jpg") == "green circle, meadow, sky blue, outdoors"
    assert shapes.caption("red_circle.jpg") == before["red_circle.jpg"]  # not selected
    for _ in range(5):
        editor.undo_button.click()
    assert on_disk(shapes) == before and editor.notice.text.startswith("undid prefix 'sks'")
    editor.undo_button.click()
    assert editor.notice.text == "nothing to undo in dataset 'shapes'"
    editor.find_text.value, editor.regex_check.value = "([", True
    editor.replace_button.click()
    assert editor.notice.text.startswith("invalid regular expression '(['")


def test_tag_table_filters_the_browser(browser, editor, shapes):
    labels = [b.description for b in editor.tag_buttons if b.layout.display != "none"]
    assert len(labels) == 6 and "grass (1)" in labels and "blue sky (1)" in labels
    assert not any(label.startswith("a red circle") for label in labels)  # prose is not a tag
    browser.selected = ["red_circle.jpg", "green_circle.jpg"]
    editor.tags_text.value = "outdoors"
    editor.add_button.click()
    assert editor.tag_buttons[0].description == "outdoors (2)"
    editor.tag_buttons[0].click()
    assert browser.filters["tag"].value == "outdoors" and browser.range_label.value == "1-2 of 2"
    assert shown(browser) == ["green_circle.jpg", "red_circle.jpg"]
    editor.tag_buttons[[b.description for b in editor.tag_buttons].index("sky (1)")].click()
    assert shown(browser) == ["green_circle.jpg"]  # exactly "sky": not the one with "blue sky"


def test_a_missing_caption_model(browser, ws, tmp_path):
    editor = CaptionEditor(browser, tmp_path / "nope.gguf", tmp_path / "nope-mmproj.gguf",
                           autostart=False)
    browser.tiles[0].edit_button.click()
    editor.ai_button.click()
    assert editor.notice.kind == "error"
    assert editor.notice.text.startswith(f"no caption model: {tmp_path / 'nope.gguf'}, "
                                         f"{tmp_path / 'nope-mmproj.gguf'} not found")
    browser.selected = ["purple_square.jpg"]
    editor.ai_selection_button.click()
    assert editor.notice.text.startswith("no caption model") and editor.job is None
    assert list(ws.jobs.iterdir()) == []
    default = CaptionEditor(browser, autostart=False)  # nothing given, nothing in the workspace
    default.ai_button.click()
    assert str(ws.models / "caption") in default.notice.text
    editor.close(), default.close()


def test_caption_the_current_image_with_ai(browser, shapes, tiny_caption):
    editor = CaptionEditor(browser, tiny_caption["caption_model"], tiny_caption["caption_mmproj"],
                           max_tokens=8)  # autostart: off the kernel's thread, as in a notebook
    try:
        browser.tiles[0].edit_button.click()
        editor.trigger_text.value = "sks"
        editor.ai_button.click()
        assert editor.ai_button.disabled and editor.notice.text.startswith("captioning blue_square")
        editor.ai.thread.join(60)
        assert not editor.ai_button.disabled
        caption = shapes.caption("blue_square.png")
        assert editor.notice.text.startswith("captioned blue_square.png in "), editor.notice.text
        # max_tokens=8 cuts every answer of the tiny model, also at 16: the editor says so
        assert editor.notice.kind == "warning" and "marked truncated" in editor.notice.text
        assert caption.startswith("sks, ") and caption != "a blue square floating in a clear sky"
        assert editor.text.value == caption and "captioned by tiny-qwen25vl.gguf" in editor.header.value
        assert browser.tiles[0].caption_text.startswith("sks, ")
        pid = editor.ai.worker.pid
        browser.tiles[1].edit_button.click()
        editor.ai_button.click()
        editor.ai.thread.join(60)
        assert editor.ai.worker.pid == pid  # the model stays loaded
        assert editor.text.value == shapes.caption("cyan_square.jpg")
    finally:
        editor.close()
    assert editor.ai.worker.pid is None


def run_job(editor: CaptionEditor, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while editor.poller.tick():
        assert time.monotonic() < deadline, editor.job.log_path.read_text()
        time.sleep(0.2)


def test_caption_the_selection_as_a_job(browser, shapes, tiny_caption):
    editor = CaptionEditor(browser, tiny_caption["caption_model"], tiny_caption["caption_mmproj"],
                           max_tokens=8, autostart=False)
    browser.filters["captioned"].value = "uncaptioned"
    browser.select_all()
    editor.mode.value = "skip"
    editor.ai_selection_button.click()
    assert editor.job.spec()["params"]["files"] == UNCAPTIONED
    assert editor.notice.text == f"caption job {editor.job.id} started for 3 images"
    run_job(editor)
    assert editor.notice.text == (f"caption job {editor.job.id} done: 3 captioned, 3 cut at the "
                                  "token limit even after a retry: saved, marked truncated")
    assert editor.progress.value == 1.0 and editor.progress.bar_style == "success"
    assert all(shapes.caption(f) for f in UNCAPTIONED)
    assert browser.range_label.value == "no images match these filters"  # refreshed: all captioned
    editor.close()


def test_a_caption_job_with_a_broken_model_is_refused_before_it_exists(browser, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    editor = CaptionEditor(browser, bad, bad, interval=0.1)
    jobs = browser.workspace.jobs
    before = sorted(jobs.iterdir()) if jobs.exists() else []
    browser.selected = ["purple_square.jpg"]
    editor.ai_selection_button.click()
    assert editor.notice.kind == "error" and editor.job is None
    assert f"caption model {bad} is not a GGUF file" in editor.notice.text
    assert (sorted(jobs.iterdir()) if jobs.exists() else []) == before  # no job record
    editor.close()
