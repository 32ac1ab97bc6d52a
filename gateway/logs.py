"""Logging setup: structlog, JSON lines under systemd (journal) or when asked, readable on a tty.
On the journal stream each line carries its syslog priority (`<4>` for a warning), so
`journalctl -p warning` filters.

Secrets never reach a log call: token and key contents are read where they are used and only
their file paths are ever mentioned.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "journal_prefix", "under_journal"]

_HANDLER_NAME = "casino-gateway"
# syslog priorities (sd-daemon(3)): journald reads a leading "<N>" on a stream line as the line's
# priority, so `journalctl -p warning` shows warnings and worse only.
PRIORITY = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "warn": 4, "error": 3,
            "exception": 3, "critical": 2}


def under_journal(stream: TextIO) -> bool:
    """True if `stream` is the journal stream systemd connected (JOURNAL_STREAM names its
    device and inode; a redirected stderr under systemd is not the journal)."""
    wanted = os.environ.get("JOURNAL_STREAM")
    if not wanted:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return wanted == f"{st.st_dev}:{st.st_ino}"


def journal_prefix(level: str, stream: TextIO) -> str:
    """'<3>' for an error line on the journal stream, '' anywhere else."""
    return f"<{PRIORITY.get(level, 6)}>" if under_journal(stream) else ""


class _Prioritised:
    """Wraps a renderer: each line starts with its syslog priority, for journald."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> str:
        level = event_dict.get("level", method_name)
        return f"<{PRIORITY.get(level, 6)}>{self._renderer(logger, method_name, event_dict)}"


def configure_logging(level: str = "info", fmt: str = "auto", *,
                      stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        under_systemd = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
        fmt = "json" if under_systemd or not stream.isatty() else "console"
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    if under_journal(stream):
        renderer = _Prioritised(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # The drivers log with the standard library (they do not depend on the gateway): the same
    # renderer, level and stream for them, or their lines (a chirp, a re-sent exception) would
    # fall to Python's last-resort handler, which drops everything below WARNING.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)]))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
