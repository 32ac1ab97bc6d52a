"""`casino-gateway diag` against a running daemon (in-process, machines on pseudo-terminals), with
the daemon stopped, and `diag probe` against a simulated machine on a pseudo-terminal. The CLI
itself runs in a worker thread (it has its own trio.run) while the daemon runs here."""

from __future__ import annotations

import io
import json
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from drivers.link.advice import open_advice as _open_advice
from drivers.sas.probe import probe
from drivers.sim.fleet import serve_fleet
from gateway.cli import main
from gateway.diag import _status, assess, render_check, render_probe
from gateway.logs import configure_logging
from tests.gateway.test_control import all_online, running_gateway, short_dir, wait_until


@pytest.fixture(autouse=True)
def logs_to_stderr():
    """Daemon logs go to the real stderr, so stdout holds only what diag prints; main() points
    structlog at this test's captured stderr, which is closed afterwards: put it back."""
    configure_logging("warning", "console", stream=sys.__stderr__)
    yield
    configure_logging("warning", "console", stream=sys.__stderr__)


async def cli(*argv: str) -> int:
    return await trio.to_thread.run_sync(main, list(argv))


async def test_diag_prints_a_table_per_port_and_machine(tmp_path: Path, capsys):
    with trio.fail_after(30):
        async with running_gateway(tmp_path) as run:
            await wait_until(run.gw, lambda: all_online(run.gw) and run.gw.activity.last)
            capsys.readouterr()
            assert await cli("diag", "--socket", str(run.socket)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("gateway control-test-gw") and "watchdog ok" in lines[0]
    header = next(line for line in lines if line.split()[:2] == ["PORT", "ADDR"])
    for column in ("STATE", "SERIAL", "ASSET", "LAST ANSWER", "P50 ms", "P99 ms", "TIMEOUTS",
                   "CRC", "NACKS", "LAST EVENT"):
        assert column in header
    rows = [line for line in lines if line.startswith("port1 ") and "online" in line]
    assert rows and "SIM0070000" in rows[0]
    assert any(line.startswith("outbox  ") and "queued" in line for line in lines)
    assert any("disk free" in line for line in lines)
    assert any(line.startswith("uplink  ") for line in lines)
    assert any(line.startswith("key     ed25519:") and "SHA256:" in line for line in lines)


async def test_diag_json_is_the_snapshot(tmp_path: Path, capsys):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, machines=1) as run:
            await wait_until(run.gw, lambda: all_online(run.gw))
            capsys.readouterr()
            assert await cli("diag", "--json", "--socket", str(run.socket)) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["ports"]["port1"]["machines"][0]["state"] == "online"
    assert set(status) == {"gateway", "ports", "outbox", "uplink", "key", "reconciliation",
                           "feed"}


async def test_diag_takes_the_socket_from_the_config(tmp_path: Path, capsys):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, machines=1) as run:
            config = tmp_path / "gateway.toml"
            config.write_text(
                f'[gateway]\nid = "x"\nkey_file = "gw.key"\ncontrol_socket = "{run.socket}"\n'
                f'[uplink]\nurl = "ws://127.0.0.1:1/"\ntoken_file = "token"\n')
            capsys.readouterr()
            assert await cli("diag", "--json", "--config", str(config)) == 0
    assert json.loads(capsys.readouterr().out)["gateway"]["id"] == "control-test-gw"


async def test_diag_watch_redraws_in_place(tmp_path: Path):
    class Terminal(io.StringIO):
        """A tty that ends the watch after its second screen."""

        scope: trio.CancelScope

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            n = super().write(text)
            if self.getvalue().count("\x1b[H\x1b[J") >= 2:
                self.scope.cancel()
            return n

    out = Terminal()
    with trio.fail_after(30):
        async with running_gateway(tmp_path, machines=1) as run:
            with trio.CancelScope() as out.scope:
                await _status(run.socket, False, 0.1, out)
    screens = out.getvalue().split("\x1b[H\x1b[J")[1:]
    assert len(screens) == 2
    assert all(s.startswith("gateway control-test-gw") for s in screens)
    assert "every 0.1s; Ctrl-C to stop" in screens[0]


async def test_diag_trace_streams_decoded_frames(tmp_path: Path, capsys):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, machines=1) as run:
            capsys.readouterr()
            assert await cli("diag", "trace", "port1", "--count", "12",
                             "--socket", str(run.socket)) == 0
            first = capsys.readouterr().out.splitlines()
            assert await cli("diag", "trace", "port1", "--count", "3", "--json",
                             "--socket", str(run.socket)) == 0
            as_json = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert await cli("diag", "trace", "port9", "--socket", str(run.socket)) == 1
            assert "no port 'port9'" in capsys.readouterr().err
    assert first[0].startswith(f"tracing port1 ({run.fleet.device_paths[0]})")
    frames = first[1:]
    assert len(frames) == 12
    assert any(" -> " in f and ("GP to 1" in f or "LP " in f) for f in frames)
    assert any(" <- " in f for f in frames)
    assert as_json[0]["ok"] is True and len([x for x in as_json if "frame" in x]) == 3


async def test_diag_with_the_daemon_stopped_says_so(tmp_path: Path, capsys):
    missing = tmp_path / "control.sock"
    assert await cli("diag", "--socket", str(missing)) == 1
    err = capsys.readouterr().err
    assert f"the gateway is not running (no control socket at {missing})" in err
    assert await cli("diag", "trace", "port1", "--socket", str(missing)) == 1
    assert "the gateway is not running" in capsys.readouterr().err


async def test_probe_reads_a_simulated_machine(tmp_path: Path, capsys):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            fleet = await nursery.start(partial(serve_fleet, 1, seed=3, events_per_second=0))
            device = fleet.device_paths[0]
            report = await probe(device, 1, timeout_s=0.1)
            assert await cli("diag", "probe", "--device", device, "--timeout-ms", "100",
                             "--socket", str(tmp_path / "none.sock")) == 0
            nursery.cancel_scope.cancel()
    assert report["ok"] is True
    by_poll = {s["poll"]: s for s in report["steps"]}
    assert by_poll["LP 1F"]["ok"] and by_poll["LP 1F"]["latency_ms"] < 100
    assert by_poll["LP 54"]["data"] == {"sas_version": by_poll["LP 54"]["data"]["sas_version"],
                                        "serial": "SIM0030000"}
    assert by_poll["LP 1A"]["data"] == {"credits": 0}
    # Meters: read where the machine supports them; otherwise reported, not a failure.
    if by_poll["LP 11"]["ok"]:
        assert isinstance(by_poll["LP 11"]["data"]["meter"], int)
    else:
        assert any("may not support them" in a for a in report["advice"])
    out = capsys.readouterr().out
    assert "OK: the machine answers" in out and "SIM0030000" in out
    assert "OK" in render_probe(report)


async def test_probe_explains_silence(tmp_path: Path, capsys):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            fleet = await nursery.start(partial(serve_fleet, 1, seed=3, events_per_second=0))
            # Nothing answers at address 9 on this line.
            assert await cli("diag", "probe", "--device", fleet.device_paths[0], "-a", "9",
                             "--timeout-ms", "30", "--json",
                             "--socket", str(tmp_path / "none.sock")) == 1
            nursery.cancel_scope.cancel()
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert all(s["result"] == "no answer" for s in report["steps"])
    [advice] = [a for a in report["advice"] if a.startswith("no answer")]
    assert "cabling" in advice and "address" in advice and "mark/space parity" in advice


async def test_probe_explains_open_failures(tmp_path: Path, capsys):
    report = await probe(str(tmp_path / "ttyUSB9"), 1)
    assert report["ok"] is False and "does not exist" in report["advice"][0]
    not_a_tty = tmp_path / "plain-file"
    not_a_tty.write_text("")
    report = await probe(str(not_a_tty), 1)
    assert "not a serial port" in report["advice"][0]
    # Root can open anything, so the permission case is checked on the explanation itself.
    assert "dialout group" in _open_advice(PermissionError(13, "Permission denied"), "/dev/ttyS0")


async def test_probe_refuses_while_the_gateway_runs(tmp_path: Path, capsys):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, machines=1) as run:
            code = await cli("diag", "probe", "--device", run.fleet.device_paths[0],
                             "--socket", str(run.socket))
    assert code == 1
    assert "the gateway is running" in capsys.readouterr().err


ESC = "\x1b[2J\x1b]0;pwned\x07"


def _snapshot_with(text: str) -> dict:
    machine = {"address": 1, "state": "online", "serial": text, "asset": text,
               "last_response_age_s": 0.1, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0,
               "polls": 1, "timeouts": 0, "crc_errors": 0, "nacks": 0,
               "last_event": {"type": text, "seq": 1, "age_s": 1.0}}
    return {"gateway": {"id": text, "version": "0", "pid": 1, "uptime_s": 1.0,
                        "watchdog": {"alive": True}, "status": text},
            "ports": {"port1": {"device": text, "state": text, "failures": 0,
                                "machines": [machine]}},
            "outbox": {"depth": 0, "delivered_seq": 0, "last_seq": 0,
                       "oldest_undelivered_age_s": None, "disk_free_bytes": None,
                       "db_bytes": None, "bytes_per_event": None, "events_per_s": 0.0,
                       "outage_hours_left": None, "intake_stopped": False, "error": text},
            "uplink": {"state": "backoff", "connected": False, "since": None, "down_for_s": 1.0,
                       "last_ack_seq": None, "lag_events": 0, "lag_s": None, "reconnects": 1,
                       "last_error": "platform error 4002: " + text, "url": text},
            "key": {"kid": text, "fingerprint": text}}


def _printable(text: str) -> bool:
    return all(c == "\n" or (c.isprintable() and c != "\x7f") for c in text)


def test_diag_output_never_carries_control_characters_from_data():
    """Issue 15: diag printed raw ANSI escapes from machine data and platform errors."""
    from gateway.diag import format_frame, render_probe, render_status, sanitize

    status = render_status(_snapshot_with(ESC + "\n\u202efake line"))
    assert _printable(status) and "\\x1b[2J" in status
    assert "\nfake line" not in status          # a newline in data cannot forge a line
    frame = format_frame({"t": 0.0, "dir": "rx", "hex": ESC, "text": ESC})
    assert _printable(frame)
    probe = render_probe({"device": ESC, "address": 1, "opened_ms": 1, "ok": False,
                          "advice": [ESC], "steps": [{"poll": "1F", "what": "x", "result": ESC,
                                                      "data": {"serial": ESC}}]})
    assert _printable(probe)
    assert sanitize("ok\tcolumn") == "ok\\tcolumn" and sanitize("plain") == "plain"


def test_diag_check_never_carries_control_characters_from_data():
    """Issue 15, for `diag --check` (Nagios): a platform error or machine data with escapes or a
    newline reached the terminal raw, and a newline forged a line (or performance data) of the
    plugin's output."""
    from gateway.diag import assess, render_check

    s = _snapshot_with(ESC + "\nCASINO-GATEWAY OK - forged | x=1")
    s["uplink"]["down_for_s"] = 9999
    code, problems = assess(s, uplink_warning_s=60, uplink_critical_s=300)
    text = render_check(s, code, problems)
    assert text.startswith("CASINO-GATEWAY CRITICAL - ")
    assert all(_printable(line) for line in text.splitlines())
    assert "\\x1b[2J" in text
    assert not any(line.startswith("CASINO-GATEWAY OK") for line in text.splitlines())


# -- diag --check (monitoring), the WHY column, Ctrl-C -----------------------------------------------

def snapshot(**changes: object) -> dict:
    """A status snapshot of a healthy two-machine gateway, with `changes` applied."""
    machine = {"address": 1, "state": "online", "serial": "S1", "asset": None,
               "last_response_age_s": 0.1, "latency_p50_ms": 0.5, "latency_p99_ms": 2.0,
               "polls": 100, "timeouts": 0, "crc_errors": 0, "nacks": 0, "last_event": None}
    s = {"gateway": {"id": "gw", "version": "0", "pid": 1, "uptime_s": 600,
                     "status": "2/2 machines online, uplink up, 0 queued",
                     "watchdog": {"alive": True, "paused": False, "events_in_flight": 0,
                                  "oldest_in_flight_s": 0.0, "stall_after_s": 15}},
         "ports": {name: {"device": f"/dev/tty{name}", "state": "running", "failures": 0,
                          "last_error": None, "machines": [dict(machine)]}
                   for name in ("port1", "port2")},
         "outbox": {"depth": 0, "intake_stopped": False, "error": None},
         "uplink": {"state": "connected", "connected": True, "down_for_s": None,
                    "last_error": None}}
    for path, value in changes.items():
        target = s
        *head, last = path.split("__")
        for key in head:
            target = target[key] if not key.isdigit() else target[int(key)]
        target[last] = value
    return s


def test_check_ok_when_everything_runs():
    code, problems = assess(snapshot())
    assert (code, problems) == (0, [])
    assert render_check(snapshot(), code, problems).startswith(
        "CASINO-GATEWAY OK - 2/2 machines online, uplink up, 0 queued | online=2;;;0;2 ")


@pytest.mark.parametrize(("changes", "code", "words"), [
    # A machine that stopped answering: WARNING, and why.
    ({"ports__port2__machines__0__state": "offline",
      "ports__port2__machines__0__last_response_age_s": 45.0,
      "ports__port2__machines__0__timeouts": 9}, 1, "port2/1 offline: no answer for 45s"),
    ({"ports__port2__machines__0__state": "offline",
      "ports__port2__machines__0__crc_errors": 30}, 1, "garbled answers (CRC errors)"),
    ({"ports__port2__machines__0__state": "offline",
      "ports__port2__machines__0__last_response_age_s": None}, 1, "never answered"),
    # A port whose device went away: WARNING with the driver's error.
    ({"ports__port2__state": "stopped", "ports__port2__failures": 3,
      "ports__port2__machines__0__state": "offline",
      "ports__port2__last_error": "cannot open /dev/ttyUSB1: No such file or directory"}, 1,
     "port port2 down: cannot open /dev/ttyUSB1: No such file or directory (retrying)"),
    # Nothing on the floor is polled: CRITICAL.
    ({"ports__port1__machines__0__state": "offline",
      "ports__port2__machines__0__state": "offline"}, 2, "no machine online (0/2)"),
    ({"gateway__watchdog__alive": False, "gateway__watchdog__oldest_in_flight_s": 20.0}, 2,
     "outbox stalled 20s"),
    ({"outbox__intake_stopped": True}, 2, "disk full"),
    ({"uplink__connected": False, "uplink__state": "backoff", "uplink__down_for_s": 300.0,
      "uplink__last_error": "TLS verification failed"}, 1, "uplink down 5m (backoff): TLS"),
    ({"uplink__connected": False, "uplink__state": "rejected", "uplink__down_for_s": 1000.0},
     2, "uplink down 16m (rejected)"),
])
def test_check_levels_and_why(changes, code, words):
    s = snapshot(**changes)
    got, problems = assess(s)
    assert got == code
    first = render_check(s, got, problems).splitlines()[0]
    assert first.startswith(f"CASINO-GATEWAY {('OK', 'WARNING', 'CRITICAL')[code]} - ")
    assert words in first


def test_a_short_uplink_outage_is_not_a_problem():
    assert assess(snapshot(uplink__connected=False, uplink__down_for_s=30.0))[0] == 0
    assert assess(snapshot(uplink__connected=False, uplink__down_for_s=30.0),
                  uplink_warning_s=10)[0] == 1


async def test_diag_check_against_the_daemon(tmp_path: Path, capsys):
    with trio.fail_after(30):
        async with running_gateway(tmp_path) as run:
            await wait_until(run.gw, lambda: all_online(run.gw))
            capsys.readouterr()
            assert await cli("diag", "--check", "--socket", str(run.socket)) == 0
    assert capsys.readouterr().out.startswith("CASINO-GATEWAY OK - 2/2 machines online")
    # Stopped: CRITICAL (monitoring must page), not the plain diag's 1.
    assert await cli("diag", "--check", "--socket", str(run.socket)) == 2
    assert "CASINO-GATEWAY CRITICAL - the gateway is not running" in capsys.readouterr().out


async def test_diag_check_unknown_when_the_answer_makes_no_sense(tmp_path: Path, capsys):
    path = short_dir(tmp_path) / "odd.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(path))
    listener.listen(1)

    async def serve_garbage() -> None:
        conn, _ = await listener.accept()
        with conn:
            await conn.recv(100)
            await conn.send(b"this is not json\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_garbage)
        assert await cli("diag", "--check", "--socket", str(path)) == 3
    listener.close()
    assert capsys.readouterr().out.startswith("CASINO-GATEWAY UNKNOWN - ")


async def test_why_a_port_is_down_in_the_table_and_the_check(tmp_path: Path, capsys):
    from gateway import daemon
    from gateway.receiver.server import ReceiverSettings, serve_receiver
    from gateway.signing import write_signing_key
    from tests.gateway.test_control import GATEWAY_ID, gateway_config

    sock = short_dir(tmp_path) / "control.sock"
    missing = "/dev/ttyUSB-unplugged-for-this-test"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            signer = write_signing_key(tmp_path / "gw.key")
            (tmp_path / "token").write_text("control-test-token\n")
            receiver = await nursery.start(serve_receiver, ReceiverSettings(
                host="127.0.0.1", port=0, db_path=tmp_path / "rx.db"))
            receiver.store.register(GATEWAY_ID, "control-test-token",
                                    bytes(signer.verify_key).hex())
            fleet = await nursery.start(partial(serve_fleet, 1, rte=True, seed=7))
            config = gateway_config(tmp_path, [*fleet.device_paths, missing], receiver.url, sock)
            # Every port has made its first attempt when run() reports started.
            gw = await nursery.start(partial(daemon.run, config, handle_signals_=False))
            await wait_until(gw, lambda: gw.drivers["port1"].statistics().machines[1].get(
                "online"))
            capsys.readouterr()
            assert await cli("diag", "--socket", str(sock)) == 0
            table = capsys.readouterr().out
            assert await cli("diag", "--check", "--socket", str(sock)) == 1
            check = capsys.readouterr().out
            nursery.cancel_scope.cancel()
    rows = [line.split(maxsplit=2) for line in table.splitlines() if line.startswith("port2 ")]
    port_row = next(rest for _, second, rest in rows if second == missing)
    assert f"cannot open {missing}" in port_row and "(retrying)" in port_row
    machine_row = next(rest for _, second, rest in rows if second == "1")
    assert "port down: cannot open" in machine_row
    assert check.startswith(f"CASINO-GATEWAY WARNING - port port2 down: cannot open {missing}")


async def test_diag_watch_exits_130_on_ctrl_c(tmp_path: Path):
    # docs/operations.md: 130 = interrupted by Ctrl-C (interactive commands).
    import signal
    import subprocess

    with trio.fail_after(60):
        async with running_gateway(tmp_path, machines=1) as run:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "diag", "--watch", "0.2", "--socket",
                 str(run.socket)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            seen = b""
            while b"gateway control-test-gw" not in seen:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, "diag --watch ended by itself"
                seen += chunk
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 130
            errors = await proc.stderr.receive_some(65536)
            await proc.stdout.aclose()
            await proc.stderr.aclose()
    assert b"Traceback" not in errors


def test_diag_says_when_this_start_began_a_new_epoch():
    """Issue 15: a rollback or a damaged outbox starts a new epoch; diag must say so."""
    from gateway.diag import render_status

    s = _snapshot_with("x")
    s["outbox"].update(epoch="b" * 16, witness="present", quarantined=2, epoch_change={
        "reason": "rollback", "previous_epoch": "a" * 16, "first_missing": 75,
        "last_missing": 152})
    text = render_status(s)
    assert f"epoch {'b' * 16}, witness present, 2 rows quarantined" in text
    assert f"NEW EPOCH this start (rollback): epoch {'a' * 16} seqs 75..152 are gone" in text
