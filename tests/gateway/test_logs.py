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


def test_under_journald_every_line_carries_its_syslog_priority(monkeypatch) -> None:
    # systemd sets JOURNAL_STREAM to the device:inode of the stream it connected; a line
    # starting "<4>" is priority warning, so `journalctl -p warning` filters.
    import os

    read, write = os.pipe()
    stream = os.fdopen(write, "w", buffering=1)
    st = os.fstat(write)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    try:
        configure_logging("debug", "auto", stream=stream)
        log = structlog.get_logger("gateway")
        log.debug("polled")
        log.info("gateway ready")
        log.warning("port failed; will retry", port="port1")
        log.error("uplink refused")
        logging.getLogger("drivers.sas.host").warning("%s: chirp", "port1")
    finally:
        configure_logging("warning", "json", stream=io.StringIO())
        stream.close()
    with os.fdopen(read) as pipe:
        lines = pipe.read().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<4>"]
    # After the prefix each line is still one JSON object (journald strips the prefix).
    assert json.loads(lines[2][3:])["event"] == "port failed; will retry"


def test_no_priority_prefix_off_the_journal(monkeypatch) -> None:
    # A stderr redirected to a file by hand under systemd is not the journal stream.
    monkeypatch.setenv("JOURNAL_STREAM", "0:0")
    out = io.StringIO()
    try:
        configure_logging("info", "json", stream=out)
        structlog.get_logger("gateway").warning("x")
    finally:
        configure_logging("warning", "json", stream=io.StringIO())
    assert out.getvalue().startswith("{")
