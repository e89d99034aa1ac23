"""lora_lab: prepare image datasets, caption them and train LoRA adapters, inside Jupyter.

Importing the package is cheap on purpose: torch, diffusers and llama_cpp load only inside the
functions that need them.
"""
from .errors import LoraLabError
from .quiet import drop_library_noise
from .workspace import Workspace

drop_library_noise()  # every entry point (CLI, jobs, kernels, server) imports this package first

__version__ = "0.1.0"
__all__ = ["LoraLabError", "Workspace", "__version__"]
