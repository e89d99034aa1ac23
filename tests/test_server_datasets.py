"""The dataset REST API through a real Jupyter server (pytest-jupyter): create, browse, caption
edits with ETags, bulk edits and undo, export."""
from __future__ import annotations

import io
import json
import shutil
import zipfile

import pytest
from conftest import jpeg_bytes
from PIL import Image
from server_api import jp_server_config, shapes, zip_bytes  # noqa: F401 (fixtures)

from lora_lab.datasets import Dataset

API = ("lora-lab", "api")


@pytest.fixture
def api(jp_fetch):
    """``await api("datasets", method="POST", body={...})`` -> (status, headers, parsed JSON)."""
    async def call(*path, method="GET", body=None, raw=None, **kwargs):
        data = raw if raw is not None else json.dumps(body) if body is not None else (
            "" if method in ("POST", "PUT") else None)
        r = await jp_fetch(*API, *path, method=method, body=data, raise_error=False, **kwargs)
        is_json = r.headers.get("Content-Type", "").startswith("application/json")
        return r.code, r.headers, json.loads(r.body) if is_json and r.body else r.body
    return call


async def test_health_names_the_workspace_and_settings(api, ws):
    code, _, body = await api("health")
    assert code == 200 and body["ok"] is True
    assert body["workspace"] == str(ws.root) and body["gpu_slots"] == 1
    assert body["max_upload_mb"] == 4096 and body["caption_model_found"] is False


async def test_create_from_a_folder_inside_the_workspace_then_list_and_stats(api, ws, samples):
    shutil.copytree(samples, ws.root / "incoming")  # a folder the user put into the workspace
    code, headers, report = await api("datasets", method="POST",
                                      body={"name": "shapes", "source": "incoming"})
    assert code == 201, report
    assert len(report["added"]) == 8 and headers["Location"].endswith("/lora-lab/api/datasets/shapes")
    code, _, listing = await api("datasets")
    assert listing == {"datasets": [{"name": "shapes", "images": 8, "captioned": 5}]}
    code, _, stats = await api("datasets", "shapes")
    assert code == 200 and stats["images"] == 8 and stats["uncaptioned"] == 3


async def test_create_from_an_uploaded_zip(api, ws):
    body = zip_bytes({"a.jpg": jpeg_bytes(seed=1), "a.txt": b"a cat", "b.jpg": jpeg_bytes(seed=2),
                      "notes.pdf": b"%PDF"})
    code, _, report = await api("datasets", method="POST", raw=body, params={"name": "up"},
                                headers={"Content-Type": "application/zip"})
    assert code == 201, report
    assert sorted(a["file"] for a in report["added"]) == ["a.jpg", "b.jpg"]
    assert report["skipped"][0]["source"] == "notes.pdf"
    assert Dataset.open("up", ws).caption("a.jpg") == "a cat"
    assert list((ws.root / ".uploads").iterdir()) == []  # the temp zip is gone
    # the same name again: refused before the body is stored
    code, _, err = await api("datasets", method="POST", raw=body, params={"name": "up"})
    assert code == 409 and "already exists" in err["detail"]
    code, _, report = await api("datasets", method="POST", params={"name": "up", "add": "1"},
                                raw=zip_bytes({"c.jpg": jpeg_bytes(seed=3)}))
    assert code == 200 and [a["file"] for a in report["added"]] == ["c.jpg"]


async def test_the_name_goes_in_the_query_with_a_json_source_too(api, ws, samples):
    shutil.copytree(samples, ws.root / "incoming")
    json_type = {"Content-Type": "application/json"}
    code, _, report = await api("datasets", method="POST", params={"name": "q"}, headers=json_type,
                                body={"source": "incoming"})
    assert code == 201 and report["dataset"] == "q"
    code, _, err = await api("datasets", method="POST", params={"name": "a"}, headers=json_type,
                             body={"source": "incoming", "name": "b"})
    assert code == 400 and "given twice" in err["detail"]
    code, _, err = await api("datasets", method="POST", headers=json_type, body={"source": "incoming"})
    assert code == 400 and "?name=NAME" in err["detail"]
    # JSON sent without its Content-Type reads as an upload: the reply says what to do
    code, _, err = await api("datasets", method="POST", params={"name": "c"}, body={"source": "incoming"})
    assert code == 400 and "Content-Type: application/json" in err["detail"]
    code, _, err = await api("datasets", method="POST", params={"name": "q", "add": "maybe"},
                             headers=json_type, body={"source": "incoming"})
    assert code == 400 and "add must be true or false" in err["detail"]
    code, _, err = await api("datasets", method="POST", params={"name": "q"}, headers=json_type,
                             body={"source": "incoming", "sources": "typo"})
    assert code == 400 and "unknown field(s) sources" in err["detail"]
    assert sorted(p.name for p in ws.datasets.iterdir()) == ["q"]


async def test_image_pages_filter_and_link_images_and_thumbnails(api, shapes, jp_fetch):
    code, _, page = await api("datasets", shapes, "images", params={"limit": 3, "offset": 2})
    assert code == 200 and page["total"] == 8 and len(page["items"]) == 3
    item = page["items"][0]
    assert {"file", "caption", "width", "height", "etag", "url", "thumbnail"} <= set(item)
    code, _, page = await api("datasets", shapes, "images", params={"q": "grass"})
    assert sorted(i["file"] for i in page["items"]) == ["green_circle.jpg", "red_circle.jpg"]
    code, _, page = await api("datasets", shapes, "images", params={"captioned": "false"})
    assert page["total"] == 3
    code, _, page = await api("datasets", shapes, "images", params={"shape": "landscape",
                                                                     "sort": "-pixels"})
    sizes = [i["width"] * i["height"] for i in page["items"]]
    assert all(i["width"] > i["height"] for i in page["items"]) and sizes == sorted(sizes)[::-1]
    for bad in ({"limit": "lots"}, {"limit": 0}, {"offset": -1}, {"captioned": "maybe"}, {"truncated": ""},
                {"shape": "round"}, {"sort": "colour"}, {"min_side": -5}, {"duplicates": "often"}):
        code, _, err = await api("datasets", shapes, "images", params=bad)
        assert code == 400 and next(iter(bad)) in err["detail"], (bad, err)

    r = await jp_fetch(*API, "datasets", shapes, "images", "blue_square.png")
    assert r.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(r.body)).size == (512, 384)
    code, _, _ = await api("datasets", shapes, "images", "blue_square.png",
                           headers={"If-None-Match": r.headers["ETag"]})
    assert code == 304  # a browser's cached copy is still good
    # the thumbnail URL from the listing works as it is (base_url included)
    url = item["thumbnail"]
    assert url.startswith("/a%40b/lora-lab/api/datasets/shapes/images/")
    r = await jp_fetch(*API, "datasets", shapes, "images", item["file"], params={"thumb": 64})
    assert r.headers["Content-Type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.body)).size) == 64
    code, _, err = await api("datasets", shapes, "images", item["file"], params={"thumb": 5000})
    assert code == 400 and "thumb must be between 32 and 1024" in err["detail"]
    code, _, err = await api("datasets", shapes, "images", "nope.jpg")
    assert code == 404 and err["error"] == "Not Found"


async def test_image_pages_filter_captions_cut_at_the_token_limit(api, shapes, ws):
    ds = Dataset.open(shapes, ws)
    entry = ds.journal.begin("caption test")
    assert ds.write_caption(entry, "purple_square.jpg", None, "a caption that stops in the",
                            {"model": "tiny", "prompt": "describe", "truncated": True})
    entry.finish()
    code, _, page = await api("datasets", shapes, "images", params={"truncated": "true"})
    assert code == 200 and [(i["file"], i["caption_truncated"]) for i in page["items"]] == [
        ("purple_square.jpg", True)]
    code, _, page = await api("datasets", shapes, "images", params={"truncated": "false", "limit": 100})
    assert page["total"] == 7 and not any(i["caption_truncated"] for i in page["items"])
    code, _, err = await api("datasets", shapes, "images", params={"truncated": "maybe"})
    assert code == 400 and "truncated" in err["detail"]


async def test_caption_etags_refuse_a_stale_write(api, shapes, ws):
    code, headers, first = await api("datasets", shapes, "captions", "red_circle.jpg")
    assert code == 200 and first["caption"] == "a red circle above green grass"
    assert headers["ETag"] == f'"{first["etag"]}"'
    # two clients read the same version; the first write wins ...
    code, headers, saved = await api("datasets", shapes, "captions", "red_circle.jpg", method="PUT",
                                     body={"caption": "sks, a red circle"},
                                     headers={"If-Match": f'"{first["etag"]}"'})
    assert code == 200 and saved["caption"] == "sks, a red circle"
    assert headers["ETag"] == f'"{saved["etag"]}"' != f'"{first["etag"]}"'
    # ... and the second, made on the old version, is refused and changes nothing
    code, _, err = await api("datasets", shapes, "captions", "red_circle.jpg", method="PUT",
                             body={"caption": "lost update"}, headers={"If-Match": first["etag"]})
    assert code == 412 and "changed since you read it" in err["detail"]
    assert Dataset.open(shapes, ws).caption("red_circle.jpg") == "sks, a red circle"
    # an image without a caption has the ETag "none"; a write without If-Match is accepted
    code, _, none = await api("datasets", shapes, "captions", "purple_square.jpg")
    assert none == {"file": "purple_square.jpg", "caption": None, "etag": "none"}
    code, _, _ = await api("datasets", shapes, "captions", "purple_square.jpg", method="PUT",
                           body={"caption": "a purple square"})
    assert code == 200 and (ws.datasets / shapes / "purple_square.txt").read_text() == "a purple square"
    code, _, err = await api("datasets", shapes, "captions", "purple_square.jpg", method="PUT",
                             body={"caption": 42})
    assert code == 400 and "caption must be a string" in err["detail"]


async def test_bulk_edit_and_undo(api, shapes, ws):
    code, _, result = await api("datasets", shapes, "captions", method="POST",
                                body={"ops": [{"op": "prefix", "text": "sks"}], "q": "circle"})
    assert code == 200 and result["changed"] == result["selected"] == 3
    ds = Dataset.open(shapes, ws)
    assert ds.caption("red_circle.jpg").startswith("sks")
    code, _, result = await api("datasets", shapes, "captions", method="POST", body={"undo": True})
    assert code == 200 and result["restored"] == 3
    assert ds.caption("red_circle.jpg") == "a red circle above green grass"
    code, _, err = await api("datasets", shapes, "captions", method="POST", body={"undo": True})
    assert code == 409 and "nothing to undo" in err["detail"]
    code, _, err = await api("datasets", shapes, "captions", method="POST",
                             body={"ops": [{"op": "explode"}]})
    assert code == 400 and "explode" in err["detail"]


async def test_export_writes_inside_the_workspace(api, shapes, ws):
    code, _, result = await api("datasets", shapes, "export", method="POST",
                                body={"format": "zip", "repeats": 5, "trigger": "sks"})
    assert code == 201, result
    assert result["path"] == "exports/shapes-zip.zip" and result["subset"] == "5_sks"
    assert zipfile.is_zipfile(ws.exports / "shapes-zip.zip")
    code, _, err = await api("datasets", shapes, "export", method="POST", body={"format": "zip"})
    assert code == 409 and "already exists" in err["detail"]
    code, _, err = await api("datasets", shapes, "export", method="POST", body={"out": "../../x"})
    assert code == 400 and "outside the workspace" in err["detail"]
    code, _, err = await api("datasets", shapes, "export", method="POST", body={"repeats": "ten"})
    assert code == 400 and "repeats must be a whole number" in err["detail"]
