"""Many writers on one dataset at once: REST requests to a real Jupyter server, a CaptionEditor
panel on its own thread and `lora-lab` CLI processes edit and ingest together. Afterwards every
journal entry starts where the one before it ended (no lost update), every If-Match write that
won was made over the caption it had read (no stale write), undo replays all of it exactly, the
index agrees with the files, and no request failed with a 5xx."""
from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
from pathlib import Path

import pytest
from conftest import jpeg_bytes
from server_api import jp_server_config  # noqa: F401 (fixture)

from lora_lab.captioning import Answer
from lora_lab.captioning.batch import CaptionSettings, caption_dataset
from lora_lab.datasets import Dataset, etag, ingest, list_datasets, lock
from lora_lab.datasets.journal import read_entry
from lora_lab.errors import Conflict
from lora_lab.widgets.browser import DatasetBrowser
from lora_lab.widgets.captions import CaptionEditor

API = ("lora-lab", "api")
LORA_LAB = Path(sys.executable).with_name("lora-lab")  # the console script of this venv
COUNT = 12  # images in the dataset every test starts from


@pytest.fixture
def api(jp_fetch):
    """``await api(*path, method=, body=, headers=)`` -> (status, parsed JSON body)."""
    async def call(*path, method="GET", body=None, **kwargs):
        data = json.dumps(body) if body is not None else None
        r = await jp_fetch(*API, *path, method=method, body=data, raise_error=False, **kwargs)
        return r.code, json.loads(r.body) if r.body else None
    return call


def write_images(folder: Path, prefix: str, count: int, seed: int) -> dict[str, str]:
    """``count`` distinct JPEGs with caption sidecars; returns file -> caption."""
    folder.mkdir(parents=True, exist_ok=True)
    captions = {}
    for i in range(count):
        file = f"{prefix}_{i:02d}.jpg"
        (folder / file).write_bytes(jpeg_bytes((32, 32), seed=seed + i))
        captions[file] = f"{prefix} number {i}"
        (folder / file).with_suffix(".txt").write_text(captions[file])
    return captions


@pytest.fixture
def photos(ws, tmp_path) -> dict[str, str]:
    """Dataset "photos": COUNT captioned images, no edits yet; returns its captions."""
    captions = write_images(tmp_path / "photos", "photo", COUNT, seed=0)
    ingest(tmp_path / "photos", "photos", workspace=ws)
    return captions


async def run_cli(ws, *argv) -> tuple[int, str]:
    """``lora-lab --workspace WS ARGV`` in its own process: (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(LORA_LAB), "--workspace", str(ws.root), *map(str, argv),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode()


def replay(ds: Dataset, initial: dict[str, str | None]) -> list[dict]:
    """Replay the journal forward from the ``initial`` captions: each entry must start from what
    the entries before it left (a lost update breaks the chain) and the last must leave the
    captions on disk. Returns the entries, oldest first."""
    state = dict(initial)
    entries = [read_entry(p) for p in sorted(ds.journal.folder.glob("*.jsonl"))]
    for entry in entries:
        assert entry["done"], entry["label"]
        for file, before, after in entry["changes"]:
            assert state[file] == before, f"{entry['label']}: {file} was {state[file]!r}, not {before!r}"
            state[file] = after
    assert state == {f: ds.caption(f) for f in state}
    return entries


def check_index(ws, name: str, files: set[str]) -> None:
    """The index, read afresh, lists exactly ``files``, each with the caption its .txt holds."""
    ds = Dataset.open(name, ws)
    rows = {r["file"]: r["caption"] for r in ds.index.all()}
    assert set(rows) == files
    assert rows == {f: ds.caption(f) for f in files}
    ds.index.close()


def undo_all(ds: Dataset) -> int:
    """Undo every journal entry, newest first (each undo refuses if its captions changed)."""
    undone = 0
    while ds.journal.last() is not None:
        ds.undo()
        undone += 1
    return undone


# -- bad input: two writers on one caption with the same If-Match ---------------------------------
async def test_same_if_match_at_once_exactly_one_wins_the_rest_get_412(api, ws, photos):
    file = "photo_03.jpg"
    for round_ in range(5):
        _, read = await api("datasets", "photos", "captions", file)
        puts = [api("datasets", "photos", "captions", file, method="PUT",
                    body={"caption": f"round {round_} writer {w}"},
                    headers={"If-Match": f'"{read["etag"]}"'}) for w in range(4)]
        results = await asyncio.gather(*puts)
        codes = sorted(code for code, _ in results)
        assert codes == [200, 412, 412, 412], results
        winner = next(body for code, body in results if code == 200)
        assert all("changed since you read it" in body["detail"]
                   for code, body in results if code == 412)
        assert Dataset.open("photos", ws).caption(file) == winner["caption"]
    ds = Dataset.open("photos", ws)
    assert len(ds.journal.history()) == 5  # one entry per winner, none for the refused
    replay(ds, dict(photos))


async def test_panel_and_rest_saving_over_the_same_read_one_wins(api, ws, photos):
    browser = DatasetBrowser("photos", ws, page_size=4, thumb_size=32)
    editor = CaptionEditor(browser, autostart=False)
    try:
        for k, file in enumerate(["photo_01.jpg", "photo_02.jpg", "photo_05.jpg"]):
            browser.current = file  # the panel reads the caption (and its etag)
            read = etag(editor.text.value)

            def type_in_panel(k=k) -> None:
                editor.text.value = f"typed in the panel {k}"  # saves with the etag it read

            rest = api("datasets", "photos", "captions", file, method="PUT",
                       body={"caption": f"sent over REST {k}"}, headers={"If-Match": read})
            (code, _), _ = await asyncio.gather(rest, asyncio.to_thread(type_in_panel))
            panel_won = editor.notice.text == f"saved {file}"
            assert (code == 200) != panel_won, (code, editor.notice.text)
            on_disk = Dataset.open("photos", ws).caption(file)
            if panel_won:
                assert code == 412 and on_disk == f"typed in the panel {k}"
            else:
                assert "changed since you opened it" in editor.notice.text
                assert on_disk == f"sent over REST {k}"
    finally:
        editor.close()
        browser.close()
    ds = Dataset.open("photos", ws)
    assert len(ds.journal.history()) == 3
    replay(ds, dict(photos))
    assert undo_all(ds) == 3 and {f: ds.caption(f) for f in photos} == photos


# -- bad input: an ingest running while bulk edits run --------------------------------------------
async def test_an_ingest_while_bulk_edits_run_both_complete_and_nothing_is_lost(api, ws, photos,
                                                                                 tmp_path):
    new = write_images(tmp_path / "new", "new", 20, seed=100)
    ingesting = asyncio.create_task(run_cli(ws, "dataset", "ingest", tmp_path / "new",
                                            "--name", "photos", "--add", "--json"))
    edits = 0
    while not ingesting.done() or edits < 2:  # edit for as long as the other process ingests
        code, body = await api("datasets", "photos", "captions", method="POST",
                               body={"ops": [{"op": "add_tags", "tags": [f"edit{edits}"]}]})
        assert code == 200 and body["changed"] == body["selected"] >= COUNT, body
        edits += 1
    rc, out = await ingesting
    assert rc == 0, out
    assert len(json.loads(out)["added"]) == 20
    ds = Dataset.open("photos", ws)
    assert len(ds) == COUNT + 20
    initial = {**photos, **new}
    entries = replay(ds, initial)
    assert len(entries) == edits
    for i, entry in enumerate(entries):  # each edit tagged every image it found, old or new
        assert {f for f, _, _ in entry["changes"]} >= set(photos)
        assert all(ds.caption(f).endswith(", ".join(f"edit{j}" for j in range(i, edits)))
                   for f, _, _ in entry["changes"])
    check_index(ws, "photos", set(initial))
    assert undo_all(ds) == edits and {f: ds.caption(f) for f in initial} == initial


# -- every surface at once -------------------------------------------------------------------------
async def rest_writer(api, files: list[str], name: str, won: list) -> list[int]:
    """Read-modify-write each caption with If-Match until it lands; then one bulk edit."""
    codes = []
    for k, file in enumerate(files):
        while True:
            code, read = await api("datasets", "photos", "captions", file)
            codes.append(code)
            text = f"{name} wrote {k}"
            code, _ = await api("datasets", "photos", "captions", file, method="PUT",
                                body={"caption": text}, headers={"If-Match": f'"{read["etag"]}"'})
            codes.append(code)
            if code == 200:
                won.append((file, read["etag"], text))
                break
    code, _ = await api("datasets", "photos", "captions", method="POST",
                        body={"ops": [{"op": "add_tags", "tags": [f"{name}-bulk"]}]})
    codes.append(code)
    return codes


def panel_writer(browser: DatasetBrowser, editor: CaptionEditor, files: list[str],
                 won: list) -> int:
    """Type a caption per file (kept when it did not change since shown), then one bulk edit."""
    edits = 0
    for k, file in enumerate(files):
        browser.current = file
        read, text = etag(editor.text.value), f"panel wrote {k}"
        editor.text.value = text
        if editor.notice.text == f"saved {file}":
            won.append((file, read, text))
            edits += 1
        else:
            assert "changed since you opened it" in editor.notice.text, editor.notice.text
    browser.select_all()
    editor.tags_text.value = "panel-bulk"
    editor.add_button.click()
    changed = re.search(r"changed (\d+) of (\d+) selected", editor.notice.text)
    assert changed and int(changed[1]) > 0, editor.notice.text
    return edits + 1


async def test_rest_a_panel_and_the_cli_write_one_dataset_at_once(api, ws, photos, tmp_path):
    new = write_images(tmp_path / "new", "new", 6, seed=200)
    files = sorted(photos)
    browser = DatasetBrowser("photos", ws, page_size=4, thumb_size=32)
    editor = CaptionEditor(browser, autostart=False)
    won: list[tuple[str, str, str]] = []  # (file, etag written over, text) of If-Match writes
    try:
        cli = [run_cli(ws, "dataset", "edit", "photos", "--add-tags", "cli-a"),
               run_cli(ws, "dataset", "caption", "photos", files[0], "set by the cli"),
               run_cli(ws, "dataset", "ingest", tmp_path / "new", "--name", "photos", "--add"),
               run_cli(ws, "dataset", "edit", "photos", "--add-tags", "cli-b")]
        rest = [rest_writer(api, files[w::3][:3], f"rest{w}", won) for w in range(3)]
        panel = asyncio.to_thread(panel_writer, browser, editor, files[1:5], won)
        results = await asyncio.gather(*cli, *rest, panel)
    finally:
        editor.close()
        browser.close()
    cli_results, rest_codes, panel_edits = results[:4], results[4:7], results[7]
    assert all(rc == 0 for rc, _ in cli_results), cli_results
    codes = [c for per_writer in rest_codes for c in per_writer]
    assert set(codes) <= {200, 412}, codes  # no 5xx, no other failure
    successes = 2 + 1 + 3 * 3 + 3 + panel_edits  # cli edits, cli caption, rest puts and bulks, panel
    ds = Dataset.open("photos", ws)
    initial = {**photos, **new}
    entries = replay(ds, initial)
    assert len(entries) == len(ds.journal.history()) == successes
    sets = {(e["changes"][0][0], e["changes"][0][2]): e["changes"][0][1]
            for e in entries if e["label"].startswith("set ")}
    for file, read, text in won:  # each If-Match write went over exactly what its writer read
        assert etag(sets[file, text]) == read
    check_index(ws, "photos", set(initial))
    assert undo_all(ds) == successes and {f: ds.caption(f) for f in initial} == initial


# -- creation, waiting, staging, batches, threads -----------------------------------------------------
async def test_one_new_dataset_created_three_times_at_once_exists_once(api, ws, tmp_path):
    write_images(ws.root / "incoming", "pic", 5, seed=300)
    cli = asyncio.create_task(run_cli(ws, "dataset", "ingest", ws.root / "incoming", "--name", "twin"))
    rest = await asyncio.gather(*[api("datasets", method="POST",
                                      body={"name": "twin", "source": "incoming"}) for _ in range(2)])
    rc, out = await cli
    assert sorted(code for code, _ in rest) in ([201, 409], [409, 409]), rest
    assert [code for code, _ in rest].count(201) + (rc == 0) == 1, (rest, out)
    losers = [body["detail"] for code, body in rest if code == 409] + ([out] if rc else [])
    assert all("dataset 'twin' already exists" in text for text in losers)
    assert [d["name"] for d in list_datasets(ws)] == ["twin"]
    assert len(Dataset.open("twin", ws)) == 5


async def test_a_write_kept_waiting_too_long_gets_a_clear_409(api, ws, photos, monkeypatch):
    monkeypatch.setattr(lock, "WAIT_S", 0.2)
    ds = Dataset.open("photos", ws)
    with ds.writing():  # another writer that does not let go (the request runs on another thread)
        code, body = await api("datasets", "photos", "captions", "photo_00.jpg", method="PUT",
                               body={"caption": "waited"})
    assert code == 409 and "is busy" in body["detail"] and "try again" in body["detail"]
    assert ds.caption("photo_00.jpg") == photos["photo_00.jpg"]
    code, _ = await api("datasets", "photos", "captions", "photo_00.jpg", method="PUT",
                        body={"caption": "waited"})
    assert code == 200 and ds.caption("photo_00.jpg") == "waited"


def test_ingest_clears_what_a_killed_ingest_left_but_not_a_running_ones(ws, photos, tmp_path):
    incoming = Dataset.open("photos", ws).meta_dir / "incoming"
    incoming.mkdir(exist_ok=True)  # an ingest leaves it, empty
    for token in ("killed", "running"):
        (incoming / token).mkdir()
        (incoming / token / "0.part").write_bytes(b"half an image")
        (incoming / f"{token}.lock").touch()
    (incoming / "3.part").write_bytes(b"left by an older version")
    held = lock.claim(incoming / "running.lock")  # as a running ingest holds it
    try:
        write_images(tmp_path / "more", "more", 2, seed=400)
        assert len(ingest(tmp_path / "more", "photos", workspace=ws, add=True).added) == 2
        assert sorted(p.name for p in incoming.iterdir()) == ["running", "running.lock"]
    finally:
        os.close(held)


def test_a_caption_batch_keeps_an_edit_made_while_the_model_worked(ws, photos):
    ds = Dataset.open("photos", ws)
    file = "photo_04.jpg"
    entry = ds.journal.begin("caption 1 images (overwrite) with tiny", key="batch-key")
    read_by_batch = ds.caption(file)
    ds.set_caption(file, "typed by hand meanwhile")
    source = {"model": "tiny", "prompt": "describe"}
    assert ds.write_caption(entry, file, read_by_batch, "the model's caption", source) is False
    assert ds.caption(file) == "typed by hand meanwhile"
    # An identical batch starting now does not take over the running one's entry ...
    assert ds.journal.unfinished("batch-key") is None
    ds.undo()  # ... undo reverts the hand edit, then refuses the entry still being written
    with pytest.raises(Conflict, match="still running"):
        ds.undo()
    assert ds.write_caption(entry, file, read_by_batch, "the model's caption", source) is True
    entry.finish()
    assert ds.undo()["restored"] == 1 and ds.caption(file) == photos[file]


class EditedMeanwhile:
    """The real tiny caption model; while it captions ``file``, someone saves that image's
    caption by hand (through another Dataset object, as another surface would)."""

    def __init__(self, caption_model, ws, file: str):
        self.caption_model, self.ws, self.file = caption_model, ws, file
        self.name = caption_model.name

    def caption(self, image: bytes, prompt: str) -> Answer:
        if self.file in prompt:  # the prompt names the image: "Describe {filename}."
            Dataset.open("photos", self.ws).set_caption(self.file, "typed by hand meanwhile")
        return self.caption_model.caption(image, prompt)


def test_a_caption_job_keeps_a_caption_edited_while_the_model_worked(ws, photos, caption_model):
    ds = Dataset.open("photos", ws)
    files = sorted(photos)[:4]
    report = caption_dataset(ds, EditedMeanwhile(caption_model, ws, files[2]),
                             CaptionSettings("Describe {filename}.", trigger="sks", mode="overwrite"),
                             files=files)
    errors = {f["file"]: f["error"] for f in report.failed}
    assert "edited while the model worked; that edit was kept" in errors[files[2]]
    assert ds.caption(files[2]) == "typed by hand meanwhile"
    assert len(replay(ds, dict(photos))) == 2  # the job's entry and, newer, the hand edit's
    assert undo_all(ds) == 2 and {f: ds.caption(f) for f in photos} == photos


def test_threads_sharing_one_dataset_each_get_their_own_index_connection(ws, photos):
    ds = Dataset.open("photos", ws)
    files = sorted(photos)
    connections, errors = set(), []

    def read() -> None:
        try:
            for _ in range(20):
                assert ds.images(0, 100).total == COUNT and ds.index.count() == COUNT
            connections.add(id(ds.index.db))
        except Exception as e:  # noqa: BLE001 (reported below, with the thread's error)
            errors.append(e)

    def write(w: int) -> None:
        try:
            for k in range(10):
                ds.set_caption(files[(w * 10 + k) % COUNT], f"thread {w} wrote {k}")
                ds.edit([{"op": "add_tags", "tags": [f"t{w}-{k}"]}], files=files[:3])
            connections.add(id(ds.index.db))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(3)]
    threads += [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(connections) == len(threads)
    assert len(replay(ds, dict(photos))) == 40
    check_index(ws, "photos", set(photos))
