"""CaptionPanel, in-process: click its buttons, set its values, tick its poller by hand, and read
what the user sees (editor, tiles, notices) and what landed on disk."""
from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
from conftest import jpeg_bytes, tree_digest
from test_jobs import wait_until
from test_train import config
from test_widgets_jobs import tiny_form

from lora_lab.datasets import Dataset, ingest
from lora_lab.datasets.thumbs import cached_thumbnail, thumbnail_path
from lora_lab.errors import NotFound
from lora_lab.jobdir import open_job, pid_alive
from lora_lab.jobs import cancel
from lora_lab.widgets import CaptionPanel
from lora_lab.widgets.caption_panel import AUTOSAVE_S
from lora_lab.widgets.launcher import TrainingLauncher

FILES = ["blue_square.png", "cyan_square.jpg", "green_circle.jpg", "orange_triangle.png",
         "purple_square.jpg", "red_circle.jpg", "white_circle.webp", "yellow_triangle.webp"]
FIRST = "a blue square floating in a clear sky"


@pytest.fixture
def shapes(ws, samples) -> Dataset:
    ingest(samples, "shapes", workspace=ws)
    return Dataset.open("shapes", ws)


@pytest.fixture
def panel(ws, shapes) -> CaptionPanel:
    p = CaptionPanel("shapes", ws, page_size=3, thumb_size=64, preview_size=256, autostart=False)
    p.browser.wait_thumbnails(10)
    yield p
    p.close()


def shown(p: CaptionPanel) -> list[str]:
    return [t.file for t in p.browser.tiles if t.layout.display != "none"]


def chips(p: CaptionPanel) -> list[str]:
    return [tag for _, tag in p.editor.chips.options]


def on_disk(ds: Dataset) -> dict[str, str | None]:
    return {r["file"]: ds.caption(r["file"]) for r in ds.index.all()}


def files_of(ds: Dataset) -> dict[str, str]:
    """The dataset's own files with their digests (its index, a cache, left out)."""
    return {k: v for k, v in tree_digest(ds.path).items() if not k.startswith(".lora_lab")}


def upload(p: CaptionPanel, *files: tuple[str, bytes]) -> None:
    """Choose files in the panel's FileUpload: the state the browser sends, as it sends it."""
    p.upload.set_state({"value": [{"name": name, "type": "", "size": len(data),
                                   "content": memoryview(data), "last_modified": 0}
                                  for name, data in files]})


def zip_of(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# -- the layout --------------------------------------------------------------------------------------
def test_grid_beside_a_large_preview_and_the_classes_the_keys_use(panel, shapes):
    assert "lora-lab-caption-panel" in panel._dom_classes
    grid, editor = panel.children[-1].children
    assert panel.browser in grid.children and panel.editor.text in editor.children  # side by side
    assert all("lora-lab-tile" in t._dom_classes and "lora-lab-open" in t.edit_button._dom_classes
               for t in panel.browser.tiles)
    for widget, cls in [(panel.editor.text, "caption-text"), (panel.editor.prev_button, "prev"),
                        (panel.editor.next_button, "next"), (panel.editor.save_next_button, "save-next"),
                        (panel.editor.ai_button, "caption-ai"), (panel.refresh_button, "refresh"),
                        (panel.editor.tag_input, "tag-input"), (panel.notice, "notice"),
                        (panel.editor.header, "current")]:
        assert f"lora-lab-{cls}" in widget._dom_classes
    assert [w for w in grid.children[0].children if "lora-lab-notice" in w._dom_classes] == []  # one
    for key in ("Alt+←", "Alt+→", "Ctrl+Enter", "Alt+C"):
        assert key in panel.editor.help.value
    # The first image is open; its preview is the image scaled to 256 px, not the 64 px tile.
    assert panel.opened.file == "blue_square.png" and "<b>blue_square.png</b>" in panel.editor.header.value
    assert bytes(panel.editor.preview.value) == thumbnail_path(shapes, "blue_square.png", 256).read_bytes()
    tile_thumb = cached_thumbnail(shapes, shapes.image("blue_square.png"), 64).read_bytes()
    assert len(bytes(panel.editor.preview.value)) > len(tile_thumb)
    panel.browser.tiles[2].edit_button.click()  # a click on the tile
    assert panel.opened.file == "green_circle.jpg" and panel.editor.text.value == "green circle, grass, sky"
    assert panel.browser.tiles[2].edit_button.button_style == "info"


def test_an_empty_dataset_and_one_that_does_not_exist(ws):
    Dataset.create("empty", ws)
    p = CaptionPanel("empty", ws, autostart=False)
    assert p.opened.file == "" and p.editor.text.disabled and p.editor.header.value == "<i>no image open</i>"
    p.editor.save_next_button.click()
    assert p.notice.text == "no more images that way"
    p.editor.ai_button.click()
    assert p.notice.text == "open an image first: click its tile"
    p.close()
    with pytest.raises(NotFound, match="dataset 'nope' does not exist"):
        CaptionPanel("nope", ws, autostart=False)


# -- captioning with the keys' buttons ---------------------------------------------------------------
def test_a_keyboard_round_type_and_save_and_next_through_every_image(panel, shapes):
    for i, file in enumerate(FILES):  # 8 images on pages of 3: the page turns by itself
        assert panel.opened.file == file and "lora-lab-current" in panel.editor.header._dom_classes
        panel.editor.text.value = f"sks, shape {i}, outdoors"
        panel.editor.save_next_button.click()
        assert shapes.caption(file) == f"sks, shape {i}, outdoors"
    assert panel.notice.text == "no more images that way" and panel.opened.file == FILES[-1]
    assert on_disk(shapes) == {f: f"sks, shape {i}, outdoors" for i, f in enumerate(FILES)}
    assert panel.tag_table.buttons[0].description == "outdoors (8)"  # counted as they were saved
    panel.editor.prev_button.click()
    assert panel.opened.file == FILES[-2] and panel.editor.text.value == "sks, shape 6, outdoors"
    for _ in range(len(FILES)):
        shapes.undo()  # each save is one step of the dataset's undo journal
    assert shapes.caption("blue_square.png") == FIRST


def test_leaving_an_image_saves_its_text_and_revert_drops_it(panel, shapes):
    panel.editor.text.value = "edited, then a tile clicked"
    panel.browser.tiles[1].edit_button.click()
    assert shapes.caption("blue_square.png") == "edited, then a tile clicked"
    assert panel.opened.file == "cyan_square.jpg"
    panel.editor.text.value = "edited, then previous"
    panel.editor.prev_button.click()
    assert shapes.caption("cyan_square.jpg") == "edited, then previous"
    panel.editor.text.value = "not wanted"
    panel.editor.revert_button.click()
    assert panel.editor.text.value == "edited, then a tile clicked" and panel.opened.file == "blue_square.png"
    panel.editor.next_button.click()
    assert shapes.caption("blue_square.png") == "edited, then a tile clicked"


def test_an_edit_left_alone_is_saved_by_the_poller(panel, shapes):
    panel.editor.text.value = "typed and left"
    panel.tick()
    assert shapes.caption("blue_square.png") == FIRST  # too soon
    panel._typed_at = time.monotonic() - AUTOSAVE_S
    panel.tick()
    assert shapes.caption("blue_square.png") == "typed and left" and panel.notice.kind == "ok"


# -- tags ------------------------------------------------------------------------------------------
def test_tag_autocomplete_and_enter_adds_the_tag(panel, shapes):
    shapes.set_caption("red_circle.jpg", "red circle, sky, grass, outdoors")
    shapes.set_caption("orange_triangle.png", "orange triangle, sky, outdoors, outdoors")
    panel.refresh_button.click()
    panel.browser.tiles[2].edit_button.click()  # green_circle.jpg: "green circle, grass, sky"
    assert chips(panel) == ["green circle", "grass", "sky"]
    panel.editor.tag_input.value = "O"
    assert panel.editor.tag_input.options == ("outdoors", "orange triangle")  # most images first
    panel.editor.tag_input.value = "circ"  # the start of a later word too; its own tags are left out
    assert panel.editor.tag_input.options == ("red circle",)
    panel.editor.tag_input.value = "outdo"
    panel.editor.tag_input._handle_custom_msg({"event": "submit"}, [])  # Enter, as the browser sends it
    assert panel.editor.text.value == "green circle, grass, sky, outdo" and panel.editor.tag_input.value == ""
    panel.editor.chips.value = "outdo"  # a click on its chip removes a tag
    assert panel.editor.chips.index is None
    panel.editor.tag_input.value = "outdoors"
    panel.editor.add_tag_button.click()
    assert panel.editor.text.value == "green circle, grass, sky, outdoors"
    assert chips(panel) == ["green circle", "grass", "sky", "outdoors"]
    panel.editor.save_next_button.click()
    assert shapes.caption("green_circle.jpg") == "green circle, grass, sky, outdoors"
    labels = [b.description for b in panel.tag_table.buttons if b.layout.display != "none"]
    assert labels[:2] == ["outdoors (3)", "sky (3)"]  # per image: "outdoors" twice counts once


def test_prose_is_not_shown_as_tags(panel, shapes):
    panel.editor.text.value = "A blue square floats in the sky. It casts no shadow, none at all."
    assert chips(panel) == []
    panel.editor.tag_input.value = "sks"
    panel.editor.add_tag_button.click()  # a tag goes before prose, where a trigger word goes
    assert panel.editor.text.value == "sks, A blue square floats in the sky. It casts no shadow, none at all."
    panel.editor.save_next_button.click()
    labels = [b.description for b in panel.tag_table.buttons if b.layout.display != "none"]
    assert not [label for label in labels if "blue square" in label or "shadow" in label]


def test_a_tag_click_shows_the_images_carrying_it(panel, shapes):
    shapes.set_caption("red_circle.jpg", "red circle, grass, sky")
    panel.refresh_button.click()
    panel.tag_table.buttons[panel.tag_table.tags.index("grass")].click()
    assert shown(panel) == ["green_circle.jpg", "red_circle.jpg"]
    assert panel.browser.filters["tag"].value == "grass"


# -- the folder --------------------------------------------------------------------------------------
def test_files_added_to_or_removed_from_the_folder_show_up_by_themselves(panel, shapes):
    panel.browser.show(sort="-file")
    assert shown(panel) == ["yellow_triangle.webp", "white_circle.webp", "red_circle.jpg"]
    (shapes.path / "zebra.jpg").write_bytes(jpeg_bytes((64, 48), seed=3))
    (shapes.path / "zebra.txt").write_text("zebra, stripes")
    (shapes.path / "white_circle.webp").unlink()
    panel.tick()
    assert shown(panel) == ["zebra.jpg", "yellow_triangle.webp", "red_circle.jpg"]
    assert "stripes (1)" in [b.description for b in panel.tag_table.buttons]
    assert panel.browser.range_label.value == "1-3 of 8"


def test_refresh_reads_captions_edited_in_place(panel, shapes):
    (shapes.path / "cyan_square.txt").write_text("cyan, edited in place")  # the folder's mtime stays
    panel.refresh_button.click()
    assert panel.browser.tiles[1].caption_text == "cyan, edited in place"
    assert "edited in place (1)" in [b.description for b in panel.tag_table.buttons]


def test_upload_a_zip_and_images(panel, shapes):
    upload(panel, ("more.zip", zip_of(**{"in/a.jpg": jpeg_bytes(seed=11), "in/a.txt": b"from a zip"})),
           ("b.jpg", jpeg_bytes(seed=12)), ("b.txt", b"b, uploaded"))
    assert panel.notice.text == "added 2 images to shapes" and panel.notice.kind == "ok"
    assert shapes.caption("a.jpg") == "from a zip" and shapes.caption("b.jpg") == "b, uploaded"
    assert panel.browser.range_label.value == "1-3 of 10" and panel.upload.value == ()
    upload(panel, ("b-again.jpg", jpeg_bytes(seed=12)), ("broken.png", b"\x89PNG not really"))
    assert panel.notice.kind == "warning" and panel.notice.text.startswith(
        "added 0 images to shapes, 1 already in it; skipped 1 (broken.png: ")


@pytest.mark.parametrize("name, data, why", [
    ("photos.zip", jpeg_bytes(), "photos.zip is not a zip file"),
    ("notes.pdf", b"%PDF-1.4", "notes.pdf is not a zip or an image (.bmp, .jpeg, .jpg, .png, .webp) "
                               "or a caption (.txt)"),
])
def test_an_upload_that_is_not_a_zip_or_an_image_changes_nothing(panel, shapes, ws, name, data, why):
    before = files_of(shapes)
    upload(panel, ("fine.jpg", jpeg_bytes(seed=5)), (name, data))
    assert panel.notice.kind == "error"
    assert panel.notice.text == f"upload refused, nothing was added: {why}"
    assert files_of(shapes) == before and len(shapes) == 8 and panel.upload.value == ()
    assert not any((ws.root / ".uploads").glob("*"))  # nothing staged was left behind


def test_an_image_deleted_while_the_panel_shows_it(panel, shapes):
    panel.browser.tiles[1].edit_button.click()  # cyan_square.jpg
    panel.editor.text.value = "typed before it went"
    before = on_disk(shapes)
    (shapes.path / "cyan_square.jpg").unlink()
    panel.tick()
    assert panel.notice.kind == "warning" and panel.notice.text == (
        "cyan_square.jpg was deleted from the dataset folder; showing green_circle.jpg. "
        "Your unsaved text for it: 'typed before it went'.")
    assert panel.opened.file == "green_circle.jpg" and panel.editor.text.value == "green circle, grass, sky"
    assert shown(panel) == ["blue_square.png", "green_circle.jpg", "orange_triangle.png"]
    del before["cyan_square.jpg"]
    assert on_disk(shapes) == before  # nothing else touched


def test_an_image_deleted_then_saved_or_clicked(panel, shapes):
    panel.editor.text.value = "the last words"
    (shapes.path / "blue_square.png").unlink()  # before the poller saw it
    panel.editor.save_next_button.click()
    assert panel.notice.text == ("blue_square.png was deleted from the dataset folder; showing "
                                 "cyan_square.jpg. Your unsaved text for it: 'the last words'.")
    assert panel.opened.file == "cyan_square.jpg"
    (shapes.path / "green_circle.jpg").unlink()
    panel.browser.tiles[1].edit_button.click()  # its tile is still on the page
    assert panel.notice.text == ("green_circle.jpg was deleted from the dataset folder; showing "
                                 "orange_triangle.png.")
    assert panel.opened.file == "orange_triangle.png"
    assert shapes.path.joinpath("blue_square.txt").read_text().strip() == FIRST  # as it was


def test_a_caption_edited_on_disk_while_open_is_never_overwritten(panel, shapes):
    panel.editor.text.value = "my careful edit"
    (shapes.path / "blue_square.txt").write_text("changed on disk")  # an editor, a script
    panel.editor.save_next_button.click()
    assert shapes.caption("blue_square.png") == "changed on disk"
    assert panel.opened.file == "blue_square.png" and panel.editor.text.value == "my careful edit"
    assert panel.notice.kind == "warning" and panel.notice.text == (
        "blue_square.png: the caption on disk changed since you opened it (now: 'changed on disk'). "
        "Your text is kept here: save writes it over that one, revert takes the one on disk.")
    panel.editor.next_button.click()  # leaving is refused too: the text would be lost
    panel._typed_at = time.monotonic() - AUTOSAVE_S
    panel.tick()  # and the poller does not save it
    assert shapes.caption("blue_square.png") == "changed on disk" and panel.opened.file == "blue_square.png"
    panel.editor.save_button.click()  # the user chose
    assert shapes.caption("blue_square.png") == "my careful edit"
    assert panel.notice.text == "saved blue_square.png"


def test_a_caption_changed_on_disk_is_shown_when_not_edited_here(panel, shapes):
    (shapes.path / "blue_square.txt").write_text("newer, from disk")
    panel.tick()
    assert panel.editor.text.value == "newer, from disk" and chips(panel) == ["newer", "from disk"]
    assert panel.notice.text == "blue_square.png: its caption changed on disk; showing the new one"
    panel.editor.text.value = "mine"
    (shapes.path / "blue_square.txt").write_text("theirs")
    panel.tick()  # edited here: said at once, before any save
    assert panel.notice.kind == "warning" and "(now: 'theirs')" in panel.notice.text
    panel.editor.revert_button.click()
    assert panel.editor.text.value == "theirs" and shapes.caption("blue_square.png") == "theirs"


def test_the_poller_runs_on_its_own_and_stops_when_closed(ws, shapes):
    p = CaptionPanel("shapes", ws, page_size=3, interval=0.05)
    (shapes.path / "aaa.jpg").write_bytes(jpeg_bytes(seed=7))
    deadline = time.monotonic() + 10
    while "aaa.jpg" not in shown(p) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shown(p)[0] == "aaa.jpg"
    p.close()
    deadline = time.monotonic() + 10
    while p.poller.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not p.poller.running


def test_a_truncated_caption_is_marked_and_filtered(panel, shapes):
    entry = shapes.journal.begin("caption batch")  # as a batch saves a caption cut after its retry
    shapes.write_caption(entry, "cyan_square.jpg", shapes.caption("cyan_square.jpg"), "cyan square, a sky that",
                         {"model": "m.gguf", "prompt": "tags", "truncated": True})
    entry.finish()
    panel.refresh_button.click()
    tile = panel.browser.tiles[1]
    assert "lora-lab-truncated" in tile._dom_classes and tile.layout.border
    assert "lora-lab-truncated" not in panel.browser.tiles[0]._dom_classes
    tile.edit_button.click()
    assert 'class="lora-lab-truncated"' in panel.editor.header.value and "token limit" in panel.editor.header.value
    panel.browser.filters["truncated"].value = True  # the filter: cut-off captions only
    assert shown(panel) == ["cyan_square.jpg"] and panel.browser.query["truncated"] is True
    panel.browser.show(truncated=False)  # from code: whole captions only
    assert shown(panel) == ["blue_square.png", "green_circle.jpg", "orange_triangle.png"]
    assert panel.browser.filters["truncated"].value is False
    panel.browser.show(truncated=True)
    panel.editor.text.value = "cyan square, a sky that ends well"
    panel.editor.save_button.click()  # edited by hand: no longer cut
    assert shown(panel) == [] and panel.browser.range_label.value == "no images match these filters"
    panel.browser.filters["truncated"].value = False
    assert "lora-lab-truncated" not in panel.browser.tiles[1]._dom_classes


# -- AI ----------------------------------------------------------------------------------------------
def test_caption_this_image_with_ai(ws, shapes, tiny_caption, tmp_path):
    missing = CaptionPanel("shapes", ws, tmp_path / "no.gguf", tmp_path / "no-mmproj.gguf",
                           autostart=False)
    missing.editor.ai_button.click()
    assert missing.notice.kind == "error" and missing.notice.text.startswith(
        f"no caption model: {tmp_path / 'no.gguf'}, {tmp_path / 'no-mmproj.gguf'} not found. Pass "
        "model= and mmproj= to CaptionPanel")
    missing.close()
    p = CaptionPanel("shapes", ws, tiny_caption["caption_model"], tiny_caption["caption_mmproj"],
                     max_tokens=8, page_size=3, autostart=False)
    try:
        p.editor.trigger.value = "sks"
        p.editor.text.value = "unsaved, replaced by the AI's"
        p.editor.ai_button.click()
        caption = shapes.caption("blue_square.png")
        assert p.notice.text.startswith("captioned blue_square.png in "), p.notice.text
        assert caption.startswith("sks, ") and p.editor.text.value == caption
        assert "captioned by tiny-qwen25vl.gguf" in p.editor.header.value
        assert p.browser.tiles[0].caption_text.startswith("sks, ") and not p.editor.ai_button.disabled
    finally:
        p.close()
    assert p.ai.worker.pid is None


# -- the AI lets go of its memory for training -------------------------------------------------------
def _running(job) -> None:
    """Once the train job runs (a long one: it is still running when the panel looks)."""
    assert wait_until(job, lambda v: v["state"] != "queued")["state"] == "running", \
        job.log_path.read_text()


def test_the_ai_lets_go_when_the_launcher_in_this_kernel_starts_training(ws, shapes, tiny_caption,
                                                                          tiny_models):
    p = CaptionPanel("shapes", ws, tiny_caption["caption_model"], tiny_caption["caption_mmproj"],
                     max_tokens=8, page_size=3, autostart=False)
    launcher = TrainingLauncher(str(tiny_models["samples"]), str(tiny_models["sd15"]), workspace=ws,
                                autostart=False)
    try:
        p.editor.ai_button.click()
        first = p.ai.worker.pid
        assert p.ai.loaded and pid_alive(first)
        assert p.ai.make_way() is True  # (what its poller calls) no training: it stays loaded
        tiny_form(launcher, **{"train.max_steps": 2000, "sample.every_n_steps": 0})
        launcher.train_button.click()
        _running(launcher.job)
        assert p.ai.make_way() is False  # let go: nothing left to look after
        assert not p.ai.loaded and not pid_alive(first)
        assert p.notice.kind == "info" and p.notice.text == (
            f"training job {launcher.job.id} started: the caption model let go of its memory for "
            "it and loads again on the next AI caption")
        p.editor.ai_button.click()  # the next request loads it again, beside the running job
        assert p.notice.text.startswith("captioned blue_square.png in "), p.notice.text
        assert p.ai.loaded and p.ai.worker.starts == 2
        assert p.ai.make_way() is True  # a job running when it loaded is no reason to let go
    finally:
        if launcher.job is not None and launcher.job.view()["state"] in ("queued", "running"):
            cancel(launcher.job)
        launcher.close()
        p.close()


def test_the_ai_lets_go_on_its_own_for_a_train_job_from_the_cli(ws, shapes, tiny_caption, tiny_models,
                                                                cli, tmp_path):
    p = CaptionPanel("shapes", ws, tiny_caption["caption_model"], tiny_caption["caption_mmproj"],
                     max_tokens=8, page_size=3)
    job = None
    try:
        p.editor.ai_button.click()  # on a thread, then the watch starts
        p.ai.thread.join(60)
        assert p.ai.loaded and p.ai.watch.running, p.notice.text
        path = config(tiny_models, train={"max_steps": 2000}).write(tmp_path / "run.toml")
        job = open_job(json.loads(cli("jobs", "submit", "train", path, "--json")[1])["id"], ws)
        deadline = time.monotonic() + 120
        while p.ai.loaded and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not p.ai.loaded and f"training job {job.id} started" in p.notice.text
        deadline = time.monotonic() + 10
        while p.ai.watch.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not p.ai.watch.running  # nothing loaded, nothing to watch
    finally:
        if job is not None and job.view()["state"] in ("queued", "running"):
            cancel(job)
        p.close()
