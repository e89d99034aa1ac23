"""Ingest from folders, zips and files — and every bad input the issue names."""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from conftest import jpeg_bytes, tree_digest
from PIL import Image

from lora_lab.datasets import Dataset, Limits, ingest
from lora_lab.errors import LoraLabError


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def ingest_json(cli, *argv) -> dict:
    return json.loads(cli("dataset", "ingest", *argv, "--json")[1])


def reasons(report: dict) -> dict[str, str]:
    return {s["source"]: s["reason"] for s in report["skipped"]}


def only_dataset_changed(ws, before: dict, name: str) -> None:
    after = tree_digest(ws.root)
    outside = {k for k in set(before) | set(after)
               if before.get(k) != after.get(k) and not k.startswith(f"datasets/{name}/")}
    assert not outside, f"written outside the dataset: {outside}"


# -- the good road -----------------------------------------------------------------------------
def test_ingest_folder_imports_images_and_captions(cli, ws, samples):
    original = tree_digest(samples)
    report = ingest_json(cli, samples, "--name", "shapes")
    assert len(report["added"]) == 8 and not report["skipped"] and not report["duplicates"]
    assert sum(a["caption"] for a in report["added"]) == 5
    ds = Dataset.open("shapes", ws)
    assert ds.caption("red_circle.jpg") == "a red circle above green grass"
    assert ds.caption("purple_square.jpg") is None
    row = ds.image("blue_square.png")
    assert (row["width"], row["height"], row["format"]) == (512, 384, "PNG")
    assert len(row["sha256"]) == 64 and len(row["phash"]) == 16
    assert tree_digest(samples) == original  # originals untouched


def test_ingest_zip_with_nested_folders(cli, ws, tmp_path):
    z = make_zip(tmp_path / "in.zip", {"set/a.jpg": jpeg_bytes(seed=1), "set/a.txt": b"tag one, tag two",
                                       "other/b.jpg": jpeg_bytes(seed=2)})
    report = ingest_json(cli, z, "--name", "z")
    assert {a["file"] for a in report["added"]} == {"a.jpg", "b.jpg"}
    assert Dataset.open("z", ws).caption("a.jpg") == "tag one, tag two"


def test_ingest_uploaded_files_and_add_to_existing(cli, ws, tmp_path):
    for i in range(3):
        (tmp_path / f"up{i}.jpg").write_bytes(jpeg_bytes(seed=10 + i))
    cli("dataset", "ingest", tmp_path / "up0.jpg", tmp_path / "up1.jpg", "--name", "up")
    report = ingest_json(cli, tmp_path / "up2.jpg", tmp_path / "up0.jpg", "--name", "up", "--add")
    assert [a["file"] for a in report["added"]] == ["up2.jpg"]
    assert report["duplicates"] == [{"source": "up0.jpg", "duplicate_of": "up0.jpg"}]
    assert len(Dataset.open("up", ws)) == 3


def test_exact_and_near_duplicates_are_flagged(cli, ws, tmp_path):
    original = jpeg_bytes((256, 256), seed=3)
    base = Image.open(io.BytesIO(original))
    recompressed, resized = io.BytesIO(), io.BytesIO()
    base.save(recompressed, "JPEG", quality=60)
    base.resize((200, 200)).save(resized, "PNG")
    folder = tmp_path / "dups"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(original)
    (folder / "a_copy.jpg").write_bytes(original)
    (folder / "b.jpg").write_bytes(recompressed.getvalue())
    (folder / "c.png").write_bytes(resized.getvalue())
    (folder / "d.jpg").write_bytes(jpeg_bytes((256, 256), seed=4))
    report = ingest_json(cli, folder, "--name", "dups")
    assert report["duplicates"] == [{"source": "a_copy.jpg", "duplicate_of": "a.jpg"}]
    near = {n["file"] for n in report["near_duplicates"]}
    assert {"b.jpg", "c.png"} <= near and "d.jpg" not in near
    assert Dataset.open("dups", ws).image("b.jpg")["near_dup_of"] in {"a.jpg", "c.png"}


def test_exif_orientation_is_honoured_in_metadata(cli, ws, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 80x40, shown 40x80
    buf = io.BytesIO()
    Image.new("RGB", (80, 40), "red").save(buf, "JPEG", exif=exif)
    (tmp_path / "rot.jpg").write_bytes(buf.getvalue())
    cli("dataset", "ingest", tmp_path / "rot.jpg", "--name", "rot")
    row = Dataset.open("rot", ws).image("rot.jpg")
    assert (row["width"], row["height"], row["orientation"]) == (40, 80, 6)


# -- bad input: zips -----------------------------------------------------------------------------
def test_zip_slip_entries_are_skipped_and_nothing_escapes(cli, ws, tmp_path):
    z = make_zip(tmp_path / "slip.zip", {"../../evil.jpg": jpeg_bytes(seed=1),
                                         "/abs/evil2.jpg": jpeg_bytes(seed=2),
                                         "ok.jpg": jpeg_bytes(seed=3)})
    before = tree_digest(ws.root)
    report = ingest_json(cli, z, "--name", "slip")
    r = reasons(report)
    assert "unsafe path" in r["../../evil.jpg"] and "unsafe path" in r["/abs/evil2.jpg"]
    assert [a["file"] for a in report["added"]] == ["ok.jpg"]
    assert not list(tmp_path.rglob("evil*.jpg"))
    only_dataset_changed(ws, before, "slip")


def test_zip_symlink_entry_is_skipped(cli, tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("real.jpg", jpeg_bytes(seed=1))
    report = ingest_json(cli, z, "--name", "link")
    assert "symbolic link" in reasons(report)["link.jpg"]


def test_zip_bomb_by_ratio_is_skipped(cli, tmp_path):
    z = make_zip(tmp_path / "bomb.zip", {"zeros.png": b"\0" * (20 * 2**20), "ok.jpg": jpeg_bytes(seed=1)})
    report = ingest_json(cli, z, "--name", "bomb")
    assert "possible zip bomb" in reasons(report)["zeros.png"]


def test_zip_bomb_by_size_or_entries_is_refused(ws, tmp_path):
    z = make_zip(tmp_path / "big.zip", {f"{i}.jpg": jpeg_bytes(seed=i) for i in range(6)})
    with pytest.raises(LoraLabError, match="possible zip bomb"):
        ingest(z, "big", workspace=ws, limits=Limits(max_total_bytes=1000))
    with pytest.raises(LoraLabError, match="6 entries .limit 5."):
        ingest(z, "big", workspace=ws, limits=Limits(max_entries=5))
    assert not (ws.datasets / "big").exists()


def test_truncated_zip_is_a_clear_error(cli, ws, tmp_path):
    z = make_zip(tmp_path / "t.zip", {"a.jpg": jpeg_bytes(seed=1), "b.jpg": jpeg_bytes(seed=2)})
    z.write_bytes(z.read_bytes()[:-40])
    assert "not a readable zip file" in cli.fails("dataset", "ingest", z, "--name", "t")
    assert not (ws.datasets / "t").exists()


def test_encrypted_entries_are_skipped(cli, ws, tmp_path):
    z = make_zip(tmp_path / "enc.zip", {"secret.jpg": jpeg_bytes(seed=1)})
    data = bytearray(z.read_bytes())  # set the "encrypted" flag in both headers, as zip -e does
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.index(signature) + flag_at] |= 0x1
    z.write_bytes(bytes(data))
    assert "encrypted" in cli.fails("dataset", "ingest", z, "--name", "enc")
    assert not (ws.datasets / "enc").exists()


class _RawName(zipfile.ZipInfo):
    """A zip entry whose name is stored as raw bytes without the UTF-8 flag (old zip tools)."""

    def __init__(self, raw: bytes):
        super().__init__(raw.decode("cp437"))
        self.raw = raw

    def _encodeFilenameFlags(self):
        return self.raw, self.flag_bits


def test_non_utf8_unicode_and_duplicate_names(cli, ws, tmp_path):
    z = tmp_path / "names.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(_RawName(b"caf\xe9.jpg"), jpeg_bytes(seed=1))  # latin-1, not UTF-8
        zf.writestr(_RawName("naïve.jpg".encode()), jpeg_bytes(seed=2))  # UTF-8 without the flag
        zf.writestr("日本/写真.jpg", jpeg_bytes(seed=3))
        zf.writestr("a/photo.jpg", jpeg_bytes(seed=4))
        zf.writestr("a/photo.txt", "first")
        zf.writestr("b/photo.jpg", jpeg_bytes(seed=5))
        zf.writestr("b/photo.txt", "second")
        zf.writestr("b/photo.png", jpeg_bytes(seed=6))
    report = ingest_json(cli, z, "--name", "names")
    files = {a["source"]: a["file"] for a in report["added"]}
    assert len(files) == 6 and not report["skipped"]
    assert files["naïve.jpg"] == "naïve.jpg" and files["日本/写真.jpg"] == "写真.jpg"
    assert files["cafΘ.jpg"] == "cafΘ.jpg"  # the raw byte 0xE9 read as cp437, as zip tools do
    ds = Dataset.open("names", ws)
    # same name in two folders, and the same stem twice: each keeps its own caption file
    assert len({Path(f).stem for f in files.values()}) == 6
    assert ds.caption(files["a/photo.jpg"]) == "first" and ds.caption(files["b/photo.jpg"]) == "second"
    assert ds.caption(files["b/photo.png"]) == "second"  # photo.txt captions every photo.* (kohya)


# -- bad input: files --------------------------------------------------------------------------
def _png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_bad_files_are_skipped_with_their_reason(cli, ws, tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    good = jpeg_bytes(seed=1)
    (src / "good.jpg").write_bytes(good)
    (src / "fake.jpg").write_bytes(b"this is not an image at all")
    (src / "truncated.jpg").write_bytes(jpeg_bytes((256, 256), seed=2)[:3000])
    (src / "empty.png").write_bytes(b"")
    (src / "bomb.png").write_bytes(_png_with_size(100_000, 100_000))
    (src / "huge.png").write_bytes(_png_with_size(9000, 8000))
    (src / "anim.gif").write_bytes(b"GIF89a")
    (src / "notes.pdf").write_bytes(b"%PDF-1.4")
    (src / "bad_caption.jpg").write_bytes(jpeg_bytes(seed=3))
    (src / "bad_caption.txt").write_bytes(b"caf\xe9 au lait")
    os.symlink("/etc/hostname", src / "link.jpg")
    report = ingest_json(cli, src, "--name", "bad")
    r = reasons(report)
    assert "not an image" in r["fake.jpg"]
    assert "corrupt or truncated" in r["truncated.jpg"]
    assert "empty file" in r["empty.png"]
    assert "too large" in r["bomb.png"] and "too large" in r["huge.png"]
    assert "not an image (.gif" in r["anim.gif"] and "not an image (.pdf" in r["notes.pdf"]
    assert "not UTF-8" in r["bad_caption.txt"]
    assert "symbolic link" in r["link.jpg"]
    assert {a["file"] for a in report["added"]} == {"good.jpg", "bad_caption.jpg"}
    assert Dataset.open("bad", ws).caption("bad_caption.jpg") is None
    assert (src / "bad_caption.txt").read_bytes() == b"caf\xe9 au lait"  # original untouched


def test_max_pixels_flag(cli, tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes((64, 64), seed=1))
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes((32, 32), seed=2))
    report = ingest_json(cli, tmp_path / "a.jpg", tmp_path / "b.jpg", "--name", "px",
                         "--max-pixels", "2000")
    assert "too large: 64x64" in reasons(report)["a.jpg"]


def test_source_without_images_creates_nothing(cli, ws, tmp_path):
    (tmp_path / "only.txt").write_text("a caption without an image")
    msg = cli.fails("dataset", "ingest", tmp_path / "only.txt", "--name", "none")
    assert "no images added" in msg and not (ws.datasets / "none").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".hidden", "", "x" * 101, "a\x00b"])
def test_dataset_names_with_path_characters_are_refused(cli, ws, samples, name):
    assert "invalid dataset name" in cli.fails("dataset", "ingest", samples, "--name", name)
    assert [p.name for p in ws.datasets.iterdir()] == []


def test_existing_dataset_name_is_refused_without_add(cli, ws, samples):
    cli("dataset", "ingest", samples, "--name", "once")
    user_files = lambda: {k: v for k, v in tree_digest(ws.datasets / "once").items()  # noqa: E731
                          if not k.startswith(".lora_lab/")}
    before = user_files()
    assert "already exists" in cli.fails("dataset", "ingest", samples, "--name", "once")
    assert user_files() == before


def test_missing_source_is_a_clear_error(cli, tmp_path):
    assert "does not exist" in cli.fails("dataset", "ingest", tmp_path / "nope.zip", "--name", "n")


def test_parallel_ingest_matches_serial(ws, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):  # above the pool threshold
        (src / f"{i:02d}.jpg").write_bytes(jpeg_bytes(seed=i))
    (src / "07.jpg").write_bytes(b"broken")
    parallel = ingest(src, "par", workspace=ws, processes=2)
    serial = ingest(src, "ser", workspace=ws, processes=1)
    assert parallel.added == serial.added and parallel.skipped == serial.skipped
    assert len(parallel.added) == 39


def test_ingest_from_a_script_on_stdin(ws, tmp_path):
    """Pool workers cannot re-import a ``__main__`` read from stdin: ingest must still work."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(30):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    script = (f"from lora_lab import Workspace\nfrom lora_lab.datasets import ingest\n"
              f"print(len(ingest({str(src)!r}, 'stdin', workspace=Workspace({str(ws.root)!r})).added))\n")
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "30", done.stderr
