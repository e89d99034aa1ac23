"""The tiny models load and run with the real libraries, and fabricate is deterministic."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download

import pytest

from lora_lab.tiny import fabricate

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return fabricate(tmp_path_factory.mktemp("tiny"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (weights, configs, tokenizer files), by relative path."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_fabricate_writes_everything(tiny: dict[str, Path]) -> None:
    assert set(tiny) == {"sd15", "sdxl", "sd15_file", "sdxl_file", "caption_model", "caption_mmproj",
                         "samples"}
    assert all(path.exists() for path in tiny.values())
    assert tiny["caption_model"].read_bytes()[:4] == b"GGUF"
    assert any(tiny["samples"].glob("*.txt"))


def test_sd15_generates(tiny: dict[str, Path]) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd15"])
    assert pipe.vae_scale_factor == 8
    # the hand-made vocabulary keeps caption words whole, as the real one does
    words = "a photo of green grass".split()
    assert pipe.tokenizer.tokenize(" ".join(words)) == [w + "</w>" for w in words]
    image = pipe(
        "a red circle", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert image.min() >= 0 and image.max() <= 1


def test_sdxl_generates(tiny: dict[str, Path]) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny["sdxl"])
    assert pipe.vae_scale_factor == 8
    image = pipe(
        "a blue square", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert image.min() >= 0 and image.max() <= 1


def test_caption_pair_captions_an_image(tiny: dict[str, Path]) -> None:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Qwen25VLChatHandler

    image = tiny["samples"] / "red_circle.jpg"
    data_uri = "data:image/jpeg;base64," + base64.b64encode(image.read_bytes()).decode()
    llm = Llama(
        model_path=str(tiny["caption_model"]),
        chat_handler=Qwen25VLChatHandler(clip_model_path=str(tiny["caption_mmproj"]), verbose=False),
        n_ctx=2048,
        verbose=False,
    )
    reply = llm.create_chat_completion(
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri}},
            {"type": "text", "text": "Describe this image."},
        ]}],
        max_tokens=MAX_TOKENS,
        temperature=0.0,
    )
    text = reply["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text.strip()
    assert 0 < reply["usage"]["completion_tokens"] <= MAX_TOKENS


def test_fabricate_is_deterministic(tiny: dict[str, Path], tmp_path: Path) -> None:
    again = fabricate(tmp_path / "again", samples=False)
    for name in ("sd15", "sdxl"):
        assert _tree_bytes(again[name]) == _tree_bytes(tiny[name])
    for name in ("caption_model", "caption_mmproj"):
        assert again[name].read_bytes() == tiny[name].read_bytes()
    other = fabricate(tmp_path / "other", sdxl=False, caption=False, samples=False, seed=1)
    assert _tree_bytes(other["sd15"]) != _tree_bytes(tiny["sd15"])


def test_import_is_cheap() -> None:
    code = "import lora_lab.tiny, sys; assert 'torch' not in sys.modules and 'gguf' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
