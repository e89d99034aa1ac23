"""The llama-cpp-python caption engine on the tiny Qwen2.5-VL GGUF pair, and its bad inputs."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from lora_lab.captioning import CaptionError, prepare_image
from lora_lab.captioning.base import MAX_CAPTION_PIXELS
from lora_lab.captioning.llama import LlamaCaptioner, model_paths
from lora_lab.tiny import gguf_models


def test_captions_every_sample_format_quietly(caption_model, tiny_caption, capfd):
    for path in sorted(tiny_caption["samples"].glob("*.*")):
        if path.suffix != ".txt":  # webp too: it is re-encoded, llama.cpp cannot read webp
            assert caption_model.caption(prepare_image(path), "Describe the image.").text.strip()
    out, err = capfd.readouterr()
    assert err == ""  # llama.cpp's ~35 lines per caption go to logging, not stderr
    assert caption_model.name == "tiny-qwen25vl.gguf + tiny-qwen25vl-mmproj.gguf"


def test_a_model_that_always_hits_the_token_limit_is_retried_once_then_marked(
        caption_model, tiny_caption, monkeypatch):
    """The random-weight model never stops by itself: every answer runs into max_tokens (8)."""
    asked, generate = [], caption_model._llm.create_chat_completion

    def recording(**kwargs):  # the real call, its limit and finish reason noted
        out = generate(**kwargs)
        asked.append((kwargs["max_tokens"], out["choices"][0]["finish_reason"]))
        return out

    monkeypatch.setattr(caption_model._llm, "create_chat_completion", recording)
    answer = caption_model.caption_file(tiny_caption["samples"] / "red_circle.jpg", "Describe.")
    assert asked == [(8, "length"), (16, "length")]  # once more at double, then given up
    assert answer.truncated and answer.retried and answer.text.strip()


def test_generic_mtmd_handler(tiny_caption):
    c = LlamaCaptioner(tiny_caption["caption_model"], tiny_caption["caption_mmproj"], handler="mtmd", max_tokens=4)
    assert c.caption_file(tiny_caption["samples"] / "red_circle.jpg", "Describe.").text
    c.close()
    with pytest.raises(CaptionError, match="closed"):
        c.caption_file(tiny_caption["samples"] / "red_circle.jpg", "Describe.")


def test_enormous_image_is_capped_before_encoding(caption_model, tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), "orange").save(big)
    prepared = prepare_image(big)
    with Image.open(io.BytesIO(prepared)) as im:
        assert im.width * im.height <= MAX_CAPTION_PIXELS and abs(im.width / im.height - 1.5) < 0.01
    assert caption_model.caption(prepared, "Describe.").text


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (80, 40), "red").save(tmp_path / "r.jpg", exif=exif)
    with Image.open(io.BytesIO(prepare_image(tmp_path / "r.jpg"))) as im:
        assert im.size == (40, 80)


def test_undecodable_image_is_a_caption_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(CaptionError, match="cannot read bad.jpg"):
        prepare_image(tmp_path / "bad.jpg")


def test_paths_from_arguments_env_or_workspace(monkeypatch, ws):
    assert model_paths("a.gguf", "b.gguf") == (Path("a.gguf"), Path("b.gguf"))
    monkeypatch.setenv("LORA_LAB_CAPTION_MODEL", "/m/model.gguf")
    monkeypatch.setenv("LORA_LAB_CAPTION_MMPROJ", "/m/mmproj.gguf")
    assert model_paths() == (Path("/m/model.gguf"), Path("/m/mmproj.gguf"))
    monkeypatch.delenv("LORA_LAB_CAPTION_MODEL")
    monkeypatch.delenv("LORA_LAB_CAPTION_MMPROJ")
    model, mmproj = model_paths(workspace=ws)
    assert model == ws.models / "caption" / "Qwen2.5-VL-7B-Instruct-Q8_0.gguf"
    assert mmproj.parent == ws.models / "caption" and mmproj.name.startswith("mmproj-")


def _bad_files(tiny_caption, tmp: Path) -> dict[str, Path]:
    model = Path(tiny_caption["caption_model"])
    (tmp / "empty.gguf").write_bytes(b"")
    (tmp / "text.gguf").write_text("hello, not a model")
    (tmp / "truncated.gguf").write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    (tmp / "folder.gguf").mkdir()
    return {"missing": tmp / "missing.gguf", "empty": tmp / "empty.gguf",
            "not GGUF": tmp / "text.gguf", "truncated": tmp / "truncated.gguf",
            "folder": tmp / "folder.gguf"}


@pytest.mark.parametrize("role", ["model", "mmproj"])
@pytest.mark.parametrize("kind, message", [
    ("missing", "file not found"), ("empty", "is empty"), ("not GGUF", "not a GGUF file"),
    ("truncated", "truncated or damaged"), ("folder", "is not a file")])
def test_bad_model_files_are_named_with_their_cause(tiny_caption, tmp_path, role, kind, message):
    bad = _bad_files(tiny_caption, tmp_path)[kind]
    args = {"model": tiny_caption["caption_model"], "mmproj": tiny_caption["caption_mmproj"], role: bad}
    with pytest.raises(CaptionError, match=message) as err:
        LlamaCaptioner(args["model"], args["mmproj"])
    assert str(bad) in str(err.value)


def test_swapped_model_and_mmproj(tiny_caption):
    with pytest.raises(CaptionError, match="is a vision projector"):
        LlamaCaptioner(tiny_caption["caption_mmproj"], tiny_caption["caption_model"])


def test_mismatched_mmproj_fails_at_load_not_mid_batch(tiny_caption, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_models, "_N_EMBD_TEXT", 32)  # projects to 32 dims; the model has 64
    other = gguf_models.write_mmproj(tmp_path / "other-mmproj.gguf")
    with pytest.raises(CaptionError, match="does not work with model"):
        LlamaCaptioner(tiny_caption["caption_model"], other)


def test_unknown_handler(tiny_caption):
    with pytest.raises(CaptionError, match="unknown caption handler"):
        LlamaCaptioner(tiny_caption["caption_model"], tiny_caption["caption_mmproj"], handler="blip")
