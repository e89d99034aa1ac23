"""Library log messages that tell a user nothing to act on, dropped exactly (nothing else).

transformers 5 without torchvision warns "`CLIPImageProcessor` requires torchvision (not
installed); falling back to `CLIPImageProcessorPil`" as soon as diffusers' pipeline modules
import an image processor by name, which they do at import time, whether or not a pipeline
ever uses one; lora_lab never does (see training.base_model). The filter sits on the logger
that emits it, so it holds before and after transformers is imported.
"""
from __future__ import annotations

import logging
import re

_TORCHVISION_FALLBACK = re.compile(r"`\w+ImageProcessor` requires torchvision \(not installed\); "
                                   r"falling back to `\w+ImageProcessorPil`")
_EMITTER = "transformers.utils.import_utils"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _TORCHVISION_FALLBACK.match(record.getMessage())


def drop_library_noise() -> None:
    """Install the filter (once per process; calling again changes nothing)."""
    logger = logging.getLogger(_EMITTER)
    if not any(isinstance(f, _DropTorchvisionFallback) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallback())
