"""Logging: one format for the gateway's structlog lines and the drivers' standard-library ones."""

from __future__ import annotations

import io
import json
import logging

import structlog

from gateway.logs import configure_logging


def test_driver_lines_reach_the_log_in_the_same_format_and_level() -> None:
    out = io.StringIO()
    try:
        configure_logging("info", "json", stream=out)
        configure_logging("info", "json", stream=out)  # configured twice: still one line each
        logging.getLogger("drivers.sas.driver").info("%s: address %d re-sent exception %02X",
                                                     "port1", 1, 0x4F)
        logging.getLogger("drivers.sas.driver").debug("below the level")
        structlog.get_logger("gateway").info("outbox open", last_seq=3)
    finally:
        configure_logging("warning", "json", stream=io.StringIO())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["event"], x["level"]) for x in lines] == [
        ("port1: address 1 re-sent exception 4F", "info"), ("outbox open", "info")]
    assert lines[0]["logger"] == "drivers.sas.driver" and lines[0]["timestamp"].endswith("Z")
