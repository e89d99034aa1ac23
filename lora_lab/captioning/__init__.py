"""Captioning: engines (llama-cpp-python, OpenAI-compatible servers), prompts, batches."""
from .base import CaptionError, Captioner, prepare_image

__all__ = ["CaptionError", "Captioner", "prepare_image"]
