"""Logging for workflow jobs: everything to the rule's log file, warnings also to the console."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_job_logging(log_path: str | Path | None, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        Path(log_path).write_text("", encoding="utf-8")
        # appending: another process (the encode worker) may add lines to the same file
        file_handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if log_path else level)
    console.setFormatter(fmt)
    root.addHandler(console)
    sys.excepthook = _log_uncaught


def _log_uncaught(exc_type, exc, tb) -> None:
    """A job that fails says why in its own log file too, not only on the console."""
    logging.getLogger("job").error("failed: %s", exc, exc_info=(exc_type, exc, tb))
