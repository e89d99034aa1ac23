"""Datasets: ingest, index, captions and their bulk edits, stats, thumbnails, export."""
from .dataset import Dataset, StaleCaption, etag, list_datasets
from .ingest import IngestReport, Limits, ingest

__all__ = ["Dataset", "IngestReport", "Limits", "StaleCaption", "etag", "ingest", "list_datasets"]
