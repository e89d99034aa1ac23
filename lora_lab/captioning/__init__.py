"""Captioning: engines (llama-cpp-python, OpenAI-compatible servers), prompts, batches.

Engines load their libraries lazily: ``lora_lab.captioning.llama.LlamaCaptioner``, its resident
child-process form ``lora_lab.captioning.worker.CaptionWorker``, and
``lora_lab.captioning.openai_server.OpenAIServerCaptioner``.
"""
from .base import Answer, Captioner, CaptionError, prepare_image
from .batch import CaptionSettings, caption_dataset

__all__ = ["Answer", "CaptionError", "CaptionSettings", "Captioner", "caption_dataset", "prepare_image"]
