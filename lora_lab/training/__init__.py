"""Training: the typed config, the trainer and what it writes."""
