"""Models: the catalogue of named base and caption models, and pulling them (or any Hub repo or
file) into the workspace's ``models/``, resumable and verified.

Importing it is light: huggingface_hub loads only when a pull talks to the Hub.
"""
from .catalogue import CAPTION_MODELS, CATALOGUE, CatalogueModel, catalogue_model
from .local import caption_pair, list_models, present
from .pull import PullPlan, parse, plan, pull, run

__all__ = ["CAPTION_MODELS", "CATALOGUE", "CatalogueModel", "PullPlan", "caption_pair",
           "catalogue_model", "list_models", "parse", "plan", "present", "pull", "run"]
