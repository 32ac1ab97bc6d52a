"""The hostile neighbour, long version (issue 15): one real daemon, machines and a card reader
playing, every attack of tests/test_hostile.py plus today's new boundaries, in rounds.

    .venv/bin/python bench/hostile.py --minutes 10

New boundaries beside the old ones: a hostile card reader port (a pty this script holds: garbage,
endless lines, a flood as fast as the gateway reads), the feed's session resume (forged, another
person's, oversized, malformed and, once a login is older than session_max_s, expired `login`
ids), and the `player` channel (a viewer tries every subscription form, replay, resync and
history while an attendant proves card events were flowing). Per round: attacks sent, daemon
alive, fds, RSS, events recorded (outbox) and received (receiver), /health latency p50/p99
against a quiet baseline of the same run. At the end: the simulator's ledger against the outbox
against the receiver (0 lost, none twice), the chain verified, the board answering.
tests/test_hostile_rounds.py runs one short round in CI.
"""
# ruff: noqa: E402  (the path is set before the imports that need it)

from __future__ import annotations

import sys
from pathlib import Path

# The script's directory goes last, not first: a bench script named like a standard module
# would otherwise shadow it (one called platform.py once broke attrs' import under trio).
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

import argparse
import contextlib
import json
import os
import resource
import secrets
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import tty
from collections import Counter
from typing import Any

import trio
from trio_websocket import open_websocket_url

ROOT = BENCH.parent
sys.path[:0] = [str(ROOT)]
sys.path.append(str(BENCH))

from crash_loop import CLI, _read_line, _receiver_rows, _setup, _verify_outbox

from gateway.catalogue import CATALOGUE
from gateway.outbox import iter_envelopes, open_readonly
from tests.test_hostile import (
    DEEP,
    MACHINES,
    SUPERVISOR,
    GatewayLog,
    configure,
    control,
    feed_attacks,
    flood,
    health,
    http,
    limit_descriptors,
    receiver_attack,
    status,
)

VIEWER = "hostile-bench-viewer-token-0123456789abcdef"
CHANNELS = ("game", "cash", "alerts", "system")   # every channel but `player`
PLAYER_EVENTS = sorted(name for name, spec in CATALOGUE.items() if spec.channel == "player")
SESSION_MAX_S = 60   # the smallest the config allows: a login kept from round 1 expires


def hostile_reader() -> tuple[int, int, str]:
    """A pty this process holds the master of: the gateway's card reader port is its slave."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def add_ports_and_tokens(config: Path, reader_device: str, secret: Path) -> None:
    import hashlib
    digest = hashlib.sha256(VIEWER.encode()).hexdigest()
    text = config.read_text()
    text = text.replace("[feed]\n", f"[feed]\nsession_max_s = {SESSION_MAX_S}\n", 1)
    text += (f'[[feed.tokens]]\nname = "vic"\nrole = "viewer"\nsha256 = "{digest}"\n'
             f'\n[[ports]]\nname = "hostile-reader"\ndevice = "{reader_device}"\n'
             f'protocol = "cardreader"\nkind = "insert"\nmachine = "port{MACHINES}/1"\n'
             f'secret_file = "{secret}"\n')
    config.write_text(text)


async def _write_all(fd: int, data: bytes, deadline: float) -> int:
    """Write `data` to the pty master as fast as the gateway reads it; bytes written."""
    sent = 0
    while sent < len(data) and trio.current_time() < deadline:
        try:
            sent += os.write(fd, data[sent:sent + 65536])
        except BlockingIOError:
            with trio.move_on_after(0.05):
                await trio.lowlevel.wait_writable(fd)
    return sent


async def reader_attacks(master: int, flood_s: float) -> dict[str, int]:
    """Garbage, huge lines and a flood on the reader's line. Returns bytes sent per attack."""
    huge = {
        "garbage": os.urandom(256 * 1024),
        "huge_track1": b"%B" + b"9" * 200_000 + b"^X^\r\n",
        "huge_track2": b";" + b"1" * 200_000 + b"?\r\n",
        "huge_status": b"IN" * 100_000 + b"\r\n",
        "in_out_storm": b"IN\r\n;4000001234567899?\r\nOUT\r\n" * 5_000,
        "nul_line": b"\x00" * 100_000 + b"\r\n",
        "no_line_end": b"%E?" + b"x" * 300_000,
    }
    sent: dict[str, int] = {}
    for name, data in huge.items():
        sent[name] = await _write_all(master, data, trio.current_time() + 10)
    deadline = trio.current_time() + flood_s
    total = 0
    while trio.current_time() < deadline:
        total += await _write_all(master, os.urandom(65536), deadline)
    sent["flood"] = total
    return sent


async def _auth(url: str, token: str, login: Any = None) -> dict[str, Any]:
    """One auth message; the first answer (welcome or error), then the connection is closed."""
    message: dict[str, Any] = {"type": "auth", "token": token}
    if login is not None:
        message["login"] = login
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps(message))
        answer: dict[str, Any] = json.loads(await ws.get_message())
    return answer


async def resume_attacks(port: int, kept: dict[str, Any]) -> dict[str, Any]:
    """Session resume: the real id continues the login; forged, another person's, huge and
    malformed ids start a fresh one (never someone else's); an expired id is refused."""
    url = f"ws://127.0.0.1:{port}/feed"
    out: dict[str, Any] = {}
    first = await _auth(url, SUPERVISOR)
    real = first["login"]
    kept.setdefault("login", real)
    kept.setdefault("at", time.monotonic())
    again = await _auth(url, SUPERVISOR, real)
    out["resumed"] = again["login"] == real and again["session_expires"] == first[
        "session_expires"]
    forged = secrets.token_urlsafe(18)
    out["forged_fresh"] = (await _auth(url, SUPERVISOR, forged))["login"] not in (forged, real)
    out["other_person_fresh"] = (await _auth(url, VIEWER, real))["login"] != real
    fresh = []
    malformed = ("A" * 60_000, "a" * 65, "x" * 15, "../" * 20, real + "\x00", 2**70, [real],
                 {"id": real}, True)
    for login in malformed:
        answer = await _auth(url, SUPERVISOR, login)
        fresh.append((answer.get("type") == "welcome" and answer["login"] != real)
                     or answer.get("code") in ("bad_json", "auth_required"))
    out["malformed_fresh"] = all(fresh)
    async with open_websocket_url(url) as ws:
        await ws.send_message('{"type":"auth","token":"' + SUPERVISOR + '","login":' + DEEP
                              + "}")
        out["deep_login"] = json.loads(await ws.get_message()).get("code")
    if time.monotonic() - kept["at"] > SESSION_MAX_S + 2:
        expired = await _auth(url, SUPERVISOR, kept["login"])
        out["expired_refused"] = expired.get("code") == "session_expired"
    out["sent"] = 5 + len(malformed) + ("expired_refused" in out)
    return out


async def player_probe(port: int, budget: float) -> dict[str, Any]:
    """A viewer tries every way to the player channel while an attendant (a supervisor here)
    proves card events were committed meanwhile. Returns what each saw."""
    url = f"ws://127.0.0.1:{port}/feed"
    out: dict[str, Any] = {"viewer_player_events": 0, "forms_refused": 0, "forms": 0}
    async with open_websocket_url(url) as watcher, open_websocket_url(url) as viewer:
        await watcher.send_message(json.dumps({"type": "auth", "token": SUPERVISOR}))
        await watcher.send_message(json.dumps({"type": "subscribe", "channels": ["player"]}))
        await viewer.send_message(json.dumps({"type": "auth", "token": VIEWER}))
        welcome = await viewer.get_message()
        out["welcome_has_card"] = "card_id" in welcome or "cardInserted" in welcome
        forms: list[dict[str, Any]] = [
            {"channels": ["player"]}, {"channels": ["game", "player"]},
            {"events": ["cardInserted"]}, {"events": PLAYER_EVENTS},
            {"channels": list(CHANNELS), "events": ["billAccepted", "cardRead"]},
            {"channels": ["Player"]}, {"channels": "player"}, {"channels": [["player"]]},
            {"channels": ["player"], "machines": ["port1/1"]}, {"events": ["cardinserted"]},
            {"channels": ["player", "player"]}, {"channels": ["player\u0000"]}]
        for i, form in enumerate(forms):
            await viewer.send_message(json.dumps({"type": "subscribe", "id": f"f{i}", **form}))
            await viewer.send_message(json.dumps({"type": "unsubscribe", "id": f"u{i}", **form}))
        await viewer.send_message(json.dumps({"type": "subscribe", "id": "all",
                                              "channels": list(CHANNELS)}))
        await viewer.send_message(json.dumps({"type": "replay", "from_seq": 1}))
        await viewer.send_message(json.dumps({"type": "resync"}))
        for machine in (f"port{m}/1" for m in range(1, MACHINES + 1)):
            await viewer.send_message(json.dumps({"type": "history", "machine": machine}))
        out["forms"] = len(forms)
        seen_player, answered = trio.Event(), trio.Event()
        answers = Counter()

        async def watch() -> None:
            while True:
                message = json.loads(await watcher.get_message())
                if message["type"] == "events" and any(
                        e["channel"] == "player" for e in message["events"]):
                    out["attendant_player_events"] = out.get("attendant_player_events", 0) + sum(
                        e["channel"] == "player" for e in message["events"])
                    seen_player.set()

        async def listen() -> None:
            while True:
                raw = await viewer.get_message()
                message = json.loads(raw)
                if message["type"] == "error" and str(message.get("ref")).startswith("f"):
                    out["forms_refused"] += 1
                elif message["type"] == "subscribed" and "player" in message["channels"]:
                    out["viewer_subscribed_player"] = True
                elif message["type"] == "events":
                    out["viewer_player_events"] += sum(
                        e["channel"] == "player" for e in message["events"])
                if "card_id" in raw:
                    out["viewer_saw_card_id"] = True
                answers[message["type"]] += 1
                if answers["replay_done"] and answers["history"] == MACHINES:
                    answered.set()   # the replay, resync and histories were all answered

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            nursery.start_soon(listen)
            with trio.move_on_after(budget):
                await seen_player.wait()
                await answered.wait()
            out["viewer_answered"] = answered.is_set()
            out["viewer_answers"] = dict(answers)
            nursery.cancel_scope.cancel()
    out["sent"] = 2 * len(forms) + 3 + MACHINES
    return out


class HealthSampler:
    """/health from its own address every 20 ms in a thread; latencies in ms."""

    def __init__(self, port: int) -> None:
        self.port, self.samples, self.failures = port, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            started = time.perf_counter()
            try:
                health(self.port, "127.0.0.5")
            except (OSError, AssertionError):
                self.failures += 1
                continue
            self.samples.append((time.perf_counter() - started) * 1000)

    def __enter__(self) -> HealthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def quantiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return (samples[0], samples[0]) if samples else (float("nan"), float("nan"))
    cuts = statistics.quantiles(samples, n=100)
    return statistics.median(samples), cuts[98]


def proc_figures(pid: int) -> tuple[int, int]:
    """Descriptors in use and RSS in KiB of the daemon."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return len(os.listdir(f"/proc/{pid}/fd")), rss


def one_round(plant: dict[str, Any], gw: subprocess.Popen, port: int, master: int,
              flood_s: float, kept: dict[str, Any]) -> dict[str, Any]:
    """Every attack once, /health sampled throughout. Asserts what must hold in every round."""
    url = next(line.split('"')[1] for line in plant["config"].read_text().splitlines()
               if line.startswith("url = "))
    sent = Counter()
    with HealthSampler(port) as sampler:
        feed = trio.run(feed_attacks, port)
        assert feed["deep_before_auth"] == "auth_required", feed
        assert feed["deep_after_auth"] == feed["big_target"] == "bad_json", feed
        assert feed["ack_nothing"]["result"] == "rejected", feed
        sent["feed parsers"] += 4   # deep before and after login, 2^70, ack of nothing
        for bad in (b'{"cmd":"trace","port":[]}', b'{"cmd":"trace","port":{}}',
                    b'{"cmd":"status","x":' + b"[" * 5000 + b"]" * 5000 + b"}"):
            assert control(plant["control"], bad)["ok"] is False
            sent["control"] += 1
        assert trio.run(receiver_attack, url, plant["base"] / "ca.pem")[0] == 4002
        sent["receiver"] += 1
        head = http(port, b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), head[:40]
        sent["http head"] += 1
        seen = trio.run(flood, port, plant["control"], gw.pid, 30)
        assert seen["new_login"] == "welcome" and seen["diag_pid"] == gw.pid, seen
        sent["flood connections"] += 1100 + 14 + 30
        before = status(plant["control"])["outbox"]["last_seq"]
        reader = trio.run(reader_attacks, master, flood_s)
        sent["reader bytes"] += sum(reader.values())
        after = status(plant["control"])
        assert after["outbox"]["last_seq"] > before + MACHINES, "polling stopped"
        ages = [m["last_response_age_s"] for name in (f"port{i + 1}" for i in range(MACHINES))
                for m in after["ports"][name]["machines"]]
        noise = after["ports"]["hostile-reader"]["machines"][0]["figures"]
        resume = trio.run(resume_attacks, port, kept)
        assert resume["resumed"] and resume["forged_fresh"] and resume["other_person_fresh"] \
            and resume["malformed_fresh"] and resume.get("expired_refused", True), resume
        assert resume["deep_login"] == "auth_required", resume
        sent["resume"] += resume["sent"]
        player = trio.run(player_probe, port, 30)
        assert player["viewer_player_events"] == 0 and not player.get("viewer_saw_card_id") \
            and not player.get("viewer_subscribed_player") and not player["welcome_has_card"] \
            and player["forms_refused"] == player["forms"] and player["viewer_answered"] \
            and player.get("attendant_player_events", 0) > 0, player
        sent["player forms"] += player["sent"]
    assert gw.poll() is None, "the daemon exited"
    fds, rss = proc_figures(gw.pid)
    last = status(plant["control"])["outbox"]["last_seq"]
    return {"sent": sent, "fds": fds, "fds_flood": seen["fds_during_flood"], "rss_kib": rss,
            "recorded": last, "received": max(_receiver_rows(plant["base"] / "rx.db"),
                                               default=0),
            "health_ms": quantiles(sampler.samples), "health_failures": sampler.failures,
            "forms_refused": player["forms_refused"], "expired_checked": "expired_refused" in resume,
            "attendant_player": player["attendant_player_events"], "reader": reader,
            "machine_age_s": max(ages), "reader_figures": noise}


def finish(plant: dict[str, Any], gw: subprocess.Popen) -> dict[str, Any]:
    """Stop play, drain, stop the daemon; the ledger against the outbox and the receiver."""
    base = plant["base"]
    plant["sim"].send_signal(signal.SIGUSR1)
    assert _read_line(plant["sim"], time.monotonic() + 60) == "all-acknowledged"
    last = status(plant["control"])["outbox"]["last_seq"]
    deadline = time.monotonic() + 60
    while max(_receiver_rows(base / "rx.db"), default=0) < last:
        assert time.monotonic() < deadline, "the receiver did not catch up"
        time.sleep(0.1)
    # Degraded is an answer too (a reader the round unplugged may not be back yet): say why.
    body = health(plant["port"], "127.0.0.6", degraded_ok=True)
    answering = body["status"] + "".join(f"; {r}" for r in body.get("reasons", []))
    reader = status(plant["control"])["ports"]["reader1"]["machines"][0]["figures"]
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(timeout=30) == 0
    plant["sim"].send_signal(signal.SIGINT)
    ledger = json.loads(_read_line(plant["sim"], time.monotonic() + 120))
    assert _verify_outbox(plant["outbox"], base / "gw.pub").ok
    conn = open_readonly(plant["outbox"])
    try:
        rows = dict(iter_envelopes(conn))
        raised = lost = twice = 0
        for i, machine in enumerate(ledger["machines"]):
            recorded = Counter(code for (code,) in conn.execute(
                "SELECT source_code FROM events WHERE machine = ? AND source_code IS NOT NULL",
                (f"port{i + 1}/1",)))
            acknowledged = Counter(machine["acknowledged_codes"])
            raised += sum(acknowledged.values())
            lost += sum((acknowledged - recorded).values())
            twice += sum((recorded - acknowledged - Counter(machine["lost_codes"])).values())
        kinds = Counter(kind for (kind,) in conn.execute(
            "SELECT type FROM events WHERE machine = 'port1/1'"))
    finally:
        conn.close()
    received = _receiver_rows(base / "rx.db")
    # Every card the reader core read is a cardInserted in the outbox. The simulator's count is
    # an upper bound: what it wrote before the gateway opened the port was flushed by the opener
    # (drivers/sim/readers.py), so it can exceed reads + bounces by those first seconds.
    readers_ok = (kinds["cardInserted"] == reader["reads"]
                  and ledger["readers"]["inserted"] >= reader["reads"] + reader["bounces"])
    return {"readers_ok": readers_ok, "reader_core": reader, "raised": raised,
            "recorded": len(rows), "received": len(received),
            "lost": lost, "twice": twice, "receiver_equal": received == rows,
            "readers": ledger.get("readers", {}),
            "card_events": {k: v for k, v in kinds.items() if k in PLAYER_EVENTS},
            "board": answering}


def run(base: Path, *, minutes: float, flood_s: float = 2.0, rate: float = 10.0,
        echo: Any = print) -> dict[str, Any]:
    """The whole run; one round at least. Returns the figures; raises on a broken promise."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(
        resource.RLIMIT_NOFILE)[1]))
    master, slave, device = hostile_reader()
    with contextlib.ExitStack() as logs:
        plant = _setup(base, MACHINES, rate, 15, logs, readers=1)
        plant["base"] = base
        with socket_port() as port:
            configure(plant, port)
        plant["port"] = port
        add_ports_and_tokens(plant["config"], device, (base / "venue.secret").resolve())
        gw = subprocess.Popen([*CLI, "run", "--config", str(plant["config"])],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              preexec_fn=limit_descriptors)
        log = GatewayLog(gw.stderr, base / "gateway.log")
        rounds: list[dict[str, Any]] = []
        try:
            log.wait_for(lambda e: e.get("event") == "feed listening"
                         or e.get("event") == "gateway ready", 60)
            deadline = time.monotonic() + 30
            while not _board_up(port):
                assert time.monotonic() < deadline, "the board never answered"
                time.sleep(0.1)
            quiet = HealthSampler(port)
            with quiet:
                time.sleep(5)   # the baseline is a measurement window, not a wait
            base_ms = quantiles(quiet.samples)
            fds0, rss0 = proc_figures(gw.pid)
            echo(f"quiet baseline: /health p50 {base_ms[0]:.1f} ms p99 {base_ms[1]:.1f} ms "
                 f"({len(quiet.samples)} samples); fds {fds0}; RSS {rss0 // 1024} MiB")
            kept: dict[str, Any] = {}
            stop_at = time.monotonic() + minutes * 60
            while not rounds or time.monotonic() < stop_at:
                r = one_round(plant, gw, port, master, flood_s, kept)
                rounds.append(r)
                p50, p99 = r["health_ms"]
                echo(f"round {len(rounds)}: sent {sum(r['sent'].values())} "
                     f"({', '.join(f'{k} {v}' for k, v in r['sent'].items())}); alive yes; "
                     f"fds {r['fds']} (flood {r['fds_flood']}); RSS {r['rss_kib'] // 1024} MiB; "
                     f"recorded {r['recorded']} received {r['received']}; /health p50 "
                     f"{p50:.1f} ms p99 {p99:.1f} ms ({p50 / base_ms[0]:.1f}x, "
                     f"{p99 / base_ms[1]:.1f}x quiet), {r['health_failures']} failed; "
                     f"viewer forms refused {r['forms_refused']}, attendant saw "
                     f"{r['attendant_player']} card events; machines' last answer "
                     f"{r['machine_age_s']:.2f} s old after the reader flood (reader noise "
                     f"{r['reader_figures']['noise_bytes']} B, bad reads "
                     f"{r['reader_figures']['bad_reads']})"
                     + ("; expired login refused" if r["expired_checked"] else ""))
            end = finish(plant, gw)
        finally:
            if gw.poll() is None:
                gw.kill()
                gw.wait()
            for proc in (plant["sim"], plant["receiver"]):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=30)
                proc.stdout.close()
            os.close(master)
            os.close(slave)
    assert end["lost"] == 0 and end["twice"] == 0 and end["receiver_equal"], end
    assert end["readers_ok"], end
    echo(f"end: {len(rounds)} rounds; crashes 0; raised {end['raised']} (machines' acknowledged "
         f"exceptions) recorded {end['recorded']} received {end['received']}; lost "
         f"{end['lost']}, twice {end['twice']}; readers {end['readers']} vs card events "
         f"{end['card_events']} and reader core {end['reader_core']}; board {end['board']}")
    return {"rounds": rounds, "end": end, "baseline_ms": base_ms}


def _board_up(port: int) -> bool:
    try:
        health(port, "127.0.0.5")
    except (OSError, AssertionError):
        return False
    return True


@contextlib.contextmanager
def socket_port() -> Any:
    """A free loopback port number (the socket is closed before the gateway binds it)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--flood-s", type=float, default=5.0, help="reader flood per round")
    p.add_argument("--rate", type=float, default=10.0, help="events per second per machine")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        run(Path(tmp), minutes=args.minutes, flood_s=args.flood_s, rate=args.rate)


if __name__ == "__main__":
    main()
