"""Jobs: long work run as its own process and recorded in a job directory (see DESIGN.md).

The job directory itself (records, tails, followers) is :mod:`lora_lab.jobdir`; this package
runs jobs: the kinds (:mod:`.kinds`), the GPU slots (:mod:`.slots`) and the runner.
"""
from .execute import run_here, run_job
from .kinds import KINDS, check_params
from .runner import LORA_CHOICES, cancel, delete, reopen, resume, submit
from .summary import job_summaries, job_summary, summarize

__all__ = ["KINDS", "LORA_CHOICES", "cancel", "check_params", "delete", "job_summaries",
           "job_summary", "reopen", "resume", "run_here", "run_job", "submit", "summarize"]
