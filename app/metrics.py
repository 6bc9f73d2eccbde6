"""Prometheus metrics (being written; see issue 5)."""

from fastapi import FastAPI


def install_metrics(app: FastAPI) -> None:
    """Placeholder until the metrics module lands: exports nothing yet."""
