"""Library log messages that tell a user nothing to act on, dropped exactly (nothing else).

- transformers 5 without torchvision warns "`CLIPImageProcessor` requires torchvision (not
  installed); falling back to `CLIPImageProcessorPil`" as soon as diffusers' pipeline modules
  import an image processor by name, whether or not a pipeline ever uses one; lora_lab never
  does (see training.base_model).
- With torchao installed (the `memory` extra), importing diffusers imports torchao, which reports
  its optional CUDA kernels missing on a CPU build, registers enums torch now handles itself,
  and lacks tensor types diffusers looks for to load torchao-serialized checkpoints (lora_lab
  quantizes in memory and never loads those).

Each filter sits on the logger that emits its message, so it holds before and after the
library is imported.
"""
from __future__ import annotations

import logging
import re

_NOISE = {
    "transformers.utils.import_utils": r"`\w+ImageProcessor` requires torchvision \(not installed\); "
                                       r"falling back to `\w+ImageProcessorPil`",
    "torchao": r"Failed to load \S+/torchao/_C\w*\.\S+\.so: ",
    "torch.utils._pytree": r"<enum '\w+'> is an Enum subclass and is now natively supported by torch.compile",
    "diffusers.quantizers.torchao.torchao_quantizer": r"Unable to import `torchao` Tensor objects",
}


class _DropNoise(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def drop_library_noise() -> None:
    """Install the filters (once per process; calling again changes nothing)."""
    for name, pattern in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise(pattern))
