"""Jobs: long work recorded in a job directory that every surface reads (see DESIGN.md)."""
from .record import JobRecord

__all__ = ["JobRecord"]
