"""Jobs: long work recorded in a job directory that every surface reads (see DESIGN.md)."""
from .execute import run_job
from .record import JobRecord, list_jobs, open_job
from .runner import cancel, resume, submit

__all__ = ["JobRecord", "cancel", "list_jobs", "open_job", "resume", "run_job", "submit"]
