"""The local caption engine: a GGUF vision-language model through llama-cpp-python.

Qwen2.5-VL (``Qwen25VLChatHandler``) by default; any other GGUF VLM through the generic MTMD
handler. Files are checked before loading and the pair is tried on a warm-up image right after,
because llama.cpp reports every bad file as the same "Failed to load model" (the cause goes to
stderr) and a mismatched mmproj only fails at the first caption.
"""
from __future__ import annotations

import collections
import ctypes
import io
import logging
import os
import threading
from pathlib import Path

from PIL import Image

from ..models.local import caption_pair
from ..workspace import Workspace
from .base import Answer, CaptionError, data_uri, prepare_image, whole_answer

log = logging.getLogger("lora_lab.captioning.llama")

HANDLERS = ("qwen25vl", "mtmd")

# ggml log level (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5) -> logging level; the INFO
# chatter (~35 lines a caption) goes to DEBUG.
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_recent_errors: collections.deque[str] = collections.deque(maxlen=5)
_log_callback = None  # kept referenced: llama.cpp calls it from C for the life of the process


def model_paths(model: str | os.PathLike | None = None, mmproj: str | os.PathLike | None = None,
                workspace: Workspace | None = None) -> tuple[Path, Path]:
    """Arguments, else ``$LORA_LAB_CAPTION_MODEL`` / ``$LORA_LAB_CAPTION_MMPROJ``, else the pair
    ``lora-lab models pull`` put in the workspace's ``models/`` (``caption``, else
    ``caption-small``; where ``caption`` goes when neither is there)."""
    def pick(arg, env: str, index: int) -> Path:
        if arg:
            return Path(arg).expanduser()
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser()
        return caption_pair(workspace or Workspace())[index]
    return (pick(model, "LORA_LAB_CAPTION_MODEL", 0), pick(mmproj, "LORA_LAB_CAPTION_MMPROJ", 1))


def model_name(model_path: Path, mmproj_path: Path) -> str:
    """How captions made with this pair are labelled in the dataset index."""
    return f"{model_path.name} + {mmproj_path.name}"


def check_gguf(path: Path, role: str) -> str:
    """Refuse a missing, empty, non-GGUF or truncated file; return its architecture."""
    hint = ("pull one with `lora-lab models pull caption` (or caption-small), or set "
            "--model/--mmproj or $LORA_LAB_CAPTION_MODEL/$LORA_LAB_CAPTION_MMPROJ")
    if not path.exists():
        raise CaptionError(f"{role} file not found: {path} ({hint})")
    if not path.is_file():
        raise CaptionError(f"{role} {path} is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise CaptionError(f"{role} {path} is empty")
    if magic != b"GGUF":
        raise CaptionError(f"{role} {path} is not a GGUF file")
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as e:  # the reader raises many types on a truncated or damaged file
        raise CaptionError(f"{role} {path} is truncated or damaged ({e})") from None


class LlamaCaptioner:
    """One GGUF model + mmproj, loaded once; ``caption`` is serialised (a Llama is not thread-safe)."""

    def __init__(self, model: str | os.PathLike | None = None, mmproj: str | os.PathLike | None = None,
                 *, handler: str = "qwen25vl", n_ctx: int = 4096, gpu: bool | None = None,
                 max_tokens: int = 300, temperature: float = 0.2, seed: int = 0,
                 workspace: Workspace | None = None):
        if handler not in HANDLERS:
            raise CaptionError(f"unknown caption handler {handler!r}; use {' or '.join(HANDLERS)}")
        self.model_path, self.mmproj_path = model_paths(model, mmproj, workspace)
        if check_gguf(self.model_path, "caption model") == "clip":
            raise CaptionError(f"caption model {self.model_path} is a vision projector (mmproj); "
                               "pass it as the mmproj and the language model as the model")
        if check_gguf(self.mmproj_path, "mmproj") != "clip":
            raise CaptionError(f"mmproj {self.mmproj_path} is not a vision projector (mmproj) GGUF")
        self.name = model_name(self.model_path, self.mmproj_path)
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        self._lock = threading.Lock()
        self._llm = self._load(handler, n_ctx, gpu)
        self._warm_up()

    def _load(self, handler: str, n_ctx: int, gpu: bool | None):
        import llama_cpp
        from llama_cpp.llama_chat_format import MTMDChatHandler, Qwen25VLChatHandler

        _route_logs()
        gpu = llama_cpp.llama_supports_gpu_offload() if gpu is None else gpu
        if handler == "qwen25vl":  # it always offloads the projector when the build can
            chat = Qwen25VLChatHandler(clip_model_path=str(self.mmproj_path), verbose=False)
        else:
            chat = MTMDChatHandler(clip_model_path=str(self.mmproj_path), verbose=False, use_gpu=gpu)
        _recent_errors.clear()
        try:
            return llama_cpp.Llama(model_path=str(self.model_path), chat_handler=chat, n_ctx=n_ctx,
                                   n_gpu_layers=-1 if gpu else 0, seed=self.seed, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise CaptionError(f"cannot load caption model {self.model_path}: {_cause(e)}") from None

    def _warm_up(self) -> None:
        """Caption a small grey image now, so a mismatched mmproj fails here, not mid-batch."""
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, "JPEG")
        try:
            self._generate(buf.getvalue(), "Describe the image.", max_tokens=1)
        except Exception as e:
            self.close()
            raise CaptionError(f"mmproj {self.mmproj_path.name} does not work with model "
                               f"{self.model_path.name}: {_cause(e)}") from None

    def caption(self, image: bytes, prompt: str) -> Answer:
        try:
            return whole_answer(lambda limit: self._generate(image, prompt, limit), self.max_tokens)
        except CaptionError:
            raise
        except Exception as e:
            raise CaptionError(f"caption generation failed: {_cause(e)}") from None

    def _generate(self, image: bytes, prompt: str, max_tokens: int) -> tuple[str, str | None]:
        """The answer's text and its finish reason ("length" when ``max_tokens`` cut it)."""
        _recent_errors.clear()
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(image)}},
            {"type": "text", "text": prompt},
        ]}]
        with self._lock:
            if self._llm is None:
                raise CaptionError("the caption model was closed")
            out = self._llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                                   temperature=self.temperature, seed=self.seed)
        choice = out["choices"][0]
        return choice["message"]["content"] or "", choice.get("finish_reason")

    def caption_file(self, path: str | os.PathLike, prompt: str) -> Answer:
        """Prepare and caption one image file."""
        return self.caption(prepare_image(path), prompt)

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None


def gpu_offload_supported() -> bool:
    """Whether this llama-cpp-python build can run layers on a GPU (else it is a CPU build)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def _cause(e: Exception) -> str:
    """The exception, plus what llama.cpp logged just before it (where the real cause is)."""
    detail = " | ".join(_recent_errors)
    return f"{e}" + (f" (llama.cpp: {detail})" if detail else "")


def _route_logs() -> None:
    """Send llama.cpp's and mtmd's C-level logging to Python logging instead of stderr."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp
    from llama_cpp import mtmd_cpp

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        message = text.decode("utf-8", "replace").strip()
        if not message:
            return
        py_level = _LEVELS.get(level, logging.DEBUG)
        if py_level >= logging.WARNING:
            _recent_errors.append(message)
        log.log(py_level, message)

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_log_set(callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
