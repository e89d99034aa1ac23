"""Notebook panels on stock ipywidgets: each one line to create, e.g. ``CaptionPanel("mydata")``.

The heavy work runs as jobs (see ``lora_lab.jobs``); the panels read the same files every other
surface reads, so a monitor reattaches to a job after a kernel restart.
"""
from .browser import DatasetBrowser
from .caption_panel import CaptionPanel
from .captions import CaptionEditor
from .jobs_panel import JobsPanel
from .launcher import TrainingLauncher
from .monitor import TrainingMonitor
from .tryout import LoraTryout

__all__ = ["CaptionEditor", "CaptionPanel", "DatasetBrowser", "JobsPanel", "LoraTryout", "TrainingLauncher",
           "TrainingMonitor"]
