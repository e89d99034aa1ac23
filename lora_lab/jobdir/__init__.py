"""The job directory, the contract between a running job and whoever watches it (DESIGN.md).

A leaf of the package: it imports no step of the data flow (training, captioning), so every
step and every surface can read and write job directories without an import circle.
"""
from .follow import JobFollower
from .record import ACTIVE, RESUMABLE, STATES, JobRecord, list_jobs, lora_files, open_job, pid_alive, process_alive
from .tail import EventTail, LineTail
from .watch import JobsWatch

__all__ = ["ACTIVE", "RESUMABLE", "STATES", "EventTail", "JobFollower", "JobRecord", "JobsWatch", "LineTail",
           "list_jobs", "lora_files", "open_job", "pid_alive", "process_alive"]
