"""lora_lab: prepare image datasets, caption them and train LoRA adapters, inside Jupyter.

Importing the package is cheap on purpose: torch, diffusers and llama_cpp load only inside the
functions that need them.
"""
from .errors import LoraLabError
from .workspace import Workspace

__version__ = "0.1.0"
__all__ = ["LoraLabError", "Workspace", "__version__"]
