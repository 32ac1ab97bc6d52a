"""Corruption suite (in the style of Vector's buffer tests): damage an outbox every way storage can,
start a real daemon on it, and check it never loses anything silently.

    .venv/bin/python bench/corruption.py [--sample] [--json FILE]

A template state directory is built once: an outbox with a live write-ahead log, its witness,
free pages, an overflow row and an index (the state a SIGKILL leaves), and the platform's copy
of every event it committed (a reference receiver database: the worst case for reuse). Each
case damages a copy, then runs `casino-gateway run` on it (bench/daemon_case.py: a receiver on a
copy of the platform's database, the simulated machines of one `casino-gateway simulate` shared
by every case, a feed replay from seq 1 so the daemon reads every row back, a live machine
event, that event at the receiver, SIGTERM). It checks:
  up        the daemon started, read everything back, polled a machine and committed a new
            event, streamed it to the receiver, was still running, and exited 0 on SIGTERM
  reused    (epoch, seq) pairs the outbox holds whose hash differs from the receiver's copy
            (what the platform held before plus what it accepted during the run): must be 0
  marker    lossMarkers (quarantine or a new epoch's) were written if and only if events are
            missing, and their counts add up to exactly that. Missing: events of the damaged
            outbox its chain no longer holds (neither the row nor a salvaged copy), except,
            after an epoch change, those the platform had acknowledged (seq <= the delivered
            mark of the file kept aside, and held by the receiver)
  verify    `casino-gateway outbox verify` on the result: OK (every hole explained), and on the
            damaged file before the start: OK exactly when nothing was damaged
Cases: the WAL cut at every frame boundary and at offsets inside each frame (frame header,
page start, page middle); a flipped byte in each page class (database header, schema, table
interior, table leaf, index, overflow, freelist, WAL header, WAL frame header) and in the
row at each position (oldest, middle, inside the newest 64, newest); an older backup restored;
the database deleted. `--sample` is the subset tests/test_corruption_short.py runs in CI.
"""
# ruff: noqa: E402  (the path is set before the imports that need it)

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.append(str(BENCH))

from daemon_case import GATEWAY_ID, Plant

from gateway.events import system_draft
from gateway.outbox import Outbox, OutboxSettings
from gateway.outbox.copy import online_copy
from gateway.signing import Signer, decode_envelope

PAGE = 4096
WAL_HEADER, FRAME_HEADER = 32, 24
ROWS_IN_DB, ROWS_IN_WAL = 300, 40  # checkpointed rows, then rows only in the WAL

Damage = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    name: str
    damage: Damage
    in_sample: bool = False


@dataclass
class Result:
    case: str
    up: bool
    reused: int
    missing: int
    markers: int
    marked: int  # the markers' counts added up
    started: int  # epochStarted events (a new epoch with nothing missing)
    verify_after: bool
    verify_before: bool
    ok: bool
    error: str = ""
    phases: dict[str, float] | None = None  # the daemon run's steps (bench/daemon_case.py)
    case_s: float = 0.0


def settings(path: Path) -> OutboxSettings:
    # Retention never prunes here (the platform's acks are not modelled): every row stays.
    return OutboxSettings(path=path, gateway_id=GATEWAY_ID, signing_process=False,
                          retention_days=0)


def draft(i: int, size: int = 0):
    data = {"code": i % 250, "name": "x" * size if size else "e"}
    return system_draft("machineException", data, now=time.time())


async def _append(outbox: Outbox, drafts: list) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run_writer)
        for d in drafts:
            await outbox.append(d)
        nursery.cancel_scope.cancel()


def build_box(box: Path, signer: Signer) -> None:
    """An outbox file with free pages, an overflow row, an index, and a live WAL: the state a
    SIGKILL leaves, copied while the writer holds the file open."""
    box.mkdir(parents=True)
    path = box / "outbox.db"
    outbox = Outbox.open(settings(path), signer)
    drafts = [draft(i, 6000 if i == 150 else 0) for i in range(ROWS_IN_DB)]
    trio.run(_append, outbox, drafts)
    # Free pages: a table written and dropped leaves them on the freelist.
    outbox._conn.execute("CREATE TABLE ballast (x BLOB)")
    outbox._conn.execute("INSERT INTO ballast VALUES (zeroblob(40000))")
    outbox._conn.execute("DROP TABLE ballast")
    outbox._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    outbox._conn.execute("PRAGMA wal_autocheckpoint=0")

    async def more() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for i in range(ROWS_IN_WAL):
                await outbox.append(draft(ROWS_IN_DB + i))
            for name in ("outbox.db", "outbox.db-wal", "outbox.db.witness"):
                shutil.copyfile(box / name, box / f"{name}.crash")
            nursery.cancel_scope.cancel()
    trio.run(more)
    outbox.close()
    for name in ("outbox.db", "outbox.db-wal", "outbox.db.witness"):
        (box / name).unlink(missing_ok=True)
        (box / f"{name}.crash").rename(box / name)
    (box / "outbox.db-shm").unlink(missing_ok=True)


def rows(path: Path) -> list[dict]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [decode_envelope(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY seq")]
    finally:
        conn.close()


# -- damage ----------------------------------------------------------------------------------

def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def wal_frames(box: Path) -> int:
    return (box.joinpath("outbox.db-wal").stat().st_size - WAL_HEADER) // (FRAME_HEADER + PAGE)


def cut_wal(offset: int) -> Damage:
    def damage(box: Path) -> None:
        with open(box / "outbox.db-wal", "r+b") as f:
            f.truncate(offset)
    return damage


def pages_of(box: Path) -> dict[str, list[int]]:
    """Page numbers of the database file by class (dbstat; the freelist from the header)."""
    conn = sqlite3.connect(f"file:{box / 'outbox.db'}?mode=ro&immutable=1", uri=True)
    try:
        classes: dict[str, list[int]] = {}
        for name, pageno, pagetype in conn.execute("SELECT name, pageno, pagetype FROM dbstat"):
            if pageno == 1:
                continue
            kind = ("index" if name.startswith("sqlite_autoindex") else
                    "overflow" if pagetype == "overflow" else
                    "interior" if pagetype == "internal" else
                    "leaf" if name == "events" else None)
            if kind:
                classes.setdefault(kind, []).append(pageno)
    finally:
        conn.close()
    header = (box / "outbox.db").read_bytes()[:100]
    trunk = int.from_bytes(header[32:36], "big")
    if trunk:
        classes["freelist"] = [trunk]
    return classes


def flip_page(kind: str) -> Damage:
    def damage(box: Path) -> None:
        pages = pages_of(box)[kind]
        page = pages[len(pages) // 2]
        flip(box / "outbox.db", (page - 1) * PAGE + PAGE // 2)
    return damage


def flip_row(position: str) -> Damage:
    def damage(box: Path) -> None:
        conn = sqlite3.connect(box / "outbox.db", isolation_level=None)
        try:
            last = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
            seq = {"oldest": 1, "middle": last // 2, "newest64": last - 20, "newest": last}[
                position]
            body = bytearray(conn.execute("SELECT body FROM events WHERE seq=?",
                                          (seq,)).fetchone()[0])
            body[len(body) // 2] ^= 0xFF
            conn.execute("UPDATE events SET body=? WHERE seq=?", (bytes(body), seq))
        finally:
            conn.close()
    return damage


def checkpointed(damage: Damage) -> Damage:
    def then(box: Path) -> None:
        conn = sqlite3.connect(box / "outbox.db", isolation_level=None)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        damage(box)
    return then


def zero_oldest_leaf(delivered: bool) -> Damage:
    """The page holding the oldest rows zeroed (storage that lost a whole page). `delivered`:
    the platform had acknowledged every event first, so nothing is missing (the new epoch is
    announced by epochStarted, no lossMarker); otherwise that page's rows are lost."""
    def damage(box: Path) -> None:
        conn = sqlite3.connect(box / "outbox.db", isolation_level=None)
        try:
            if delivered:
                conn.execute("UPDATE meta SET value=(SELECT max(seq) FROM events) "
                             "WHERE key='delivered_seq'")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            leaf = min(p for (p,) in conn.execute(
                "SELECT pageno FROM dbstat WHERE name='events' AND pagetype='leaf'"))
        finally:
            conn.close()
        with open(box / "outbox.db", "r+b") as f:
            f.seek((leaf - 1) * PAGE)
            f.write(bytes(PAGE))
    return damage


def flip_schema(box: Path) -> None:
    """A byte of the events table's CREATE statement in the schema (page 1)."""
    at = (box / "outbox.db").read_bytes()[:PAGE].find(b"CREATE TABLE events")
    flip(box / "outbox.db", at + 8)


def restore_backup(box: Path) -> None:
    shutil.copyfile(box.parent / "backup.db", box / "outbox.db")
    (box / "outbox.db-wal").unlink(missing_ok=True)


def delete_database(box: Path) -> None:
    for name in ("outbox.db", "outbox.db-wal"):
        (box / name).unlink(missing_ok=True)


def cases(frames: int) -> Iterator[Case]:
    yield Case("intact", lambda box: None, True)
    for frame in range(frames + 1):
        start = WAL_HEADER + frame * (FRAME_HEADER + PAGE)
        yield Case(f"wal-cut-frame-{frame}", cut_wal(start), frame == 0)
        if frame < frames:
            for inside, label in ((10, "header"), (FRAME_HEADER + 1, "page-start"),
                                  (FRAME_HEADER + PAGE // 2, "page-middle")):
                yield Case(f"wal-cut-frame-{frame}-{label}", cut_wal(start + inside),
                           frame == frames // 2 and label == "page-middle")
    # Damage to the database file, once the WAL is checkpointed into it (before that, the
    # WAL's newer copy of a page masks it: the wal-* cases cover the log itself).
    yield Case("flip-db-header", checkpointed(lambda box: flip(box / "outbox.db", 3)), True)
    yield Case("flip-schema", checkpointed(flip_schema), True)
    for kind in ("interior", "leaf", "index", "overflow", "freelist"):
        yield Case(f"flip-{kind}-page", checkpointed(flip_page(kind)),
                   kind in ("leaf", "freelist"))
    yield Case("flip-wal-header", lambda box: flip(box / "outbox.db-wal", 20), True)
    yield Case("flip-wal-frame-header",
               lambda box: flip(box / "outbox.db-wal", WAL_HEADER + 3 * (FRAME_HEADER + PAGE) + 4))
    for position in ("oldest", "middle", "newest64", "newest"):
        yield Case(f"flip-row-{position}", flip_row(position),
                   position == "middle")
    yield Case("zero-oldest-leaf-page", zero_oldest_leaf(False))
    yield Case("zero-oldest-leaf-page-delivered", zero_oldest_leaf(True), True)
    yield Case("restore-older-backup", restore_backup, True)
    yield Case("delete-database", delete_database, True)


# -- one case ---------------------------------------------------------------------------------

def verify_ok(path: Path, pub: Path) -> bool:
    from gateway.cli import main as cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = cli(["outbox", "verify", "--db", str(path), "--public-key", str(pub),
                        "--json"])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return code == 0


NEW_EPOCH = ("rollback", "database-lost", "database-corrupt")


def acknowledged(box: Path) -> int:
    """The delivered mark of the file an epoch change kept aside (0 if none, or unreadable):
    the old epoch's seqs the platform had acknowledged, which the new epoch need not explain."""
    marks = [0]
    for aside in box.glob("outbox.db.*-*"):
        if aside.name.endswith(("-wal", "-shm")):
            continue
        with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
            conn = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
            try:
                marks.append(int(conn.execute(
                    "SELECT value FROM meta WHERE key='delivered_seq'").fetchone()[0]))
            finally:
                conn.close()
    return max(marks)


def platform_rows(rx_db: Path) -> dict[tuple[str, int], bytes]:
    """What the reference receiver holds of this gateway: (epoch, seq) -> hash."""
    conn = sqlite3.connect(f"file:{rx_db}?mode=ro", uri=True)
    try:
        return {(epoch, seq): decode_envelope(body)["hash"] for epoch, seq, body in conn.execute(
            "SELECT epoch, seq, body FROM events WHERE gateway_id=?", (GATEWAY_ID,))}
    finally:
        conn.close()


def run_case(case: Case, plant: Plant, template: Path, old: list[dict], rx_template: Path,
             work: Path, keep: bool = False) -> Result:
    """Damage a copy of the template, run a real daemon on it, and count (module docstring).
    `old`: the template outbox's events."""
    case_dir, began = work / case.name, time.monotonic()
    shutil.copytree(template / "state", case_dir / "state")
    shutil.copyfile(template / "backup.db", case_dir / "backup.db")
    rx_db = case_dir / "rx.db"
    shutil.copyfile(rx_template, rx_db)
    box = case_dir / "state"
    path = box / "outbox.db"
    old_epoch = old[0]["epoch"]
    traces = {e["trace_id"]: e["seq"] for e in old}
    case.damage(box)
    verify_before = path.exists() and verify_ok(path, plant.pub)
    run = plant.run_daemon(case_dir, rx_db, set(traces))
    after = rows(path) if path.exists() else []
    held = platform_rows(rx_db)
    reused = sum(1 for e in after if held.get((e["epoch"], e["seq"]), e["hash"]) != e["hash"])
    present = {e["trace_id"] for e in after}
    epochs = {e["epoch"] for e in after}
    delivered = acknowledged(box) if old_epoch not in epochs else 0
    missing = sum(1 for t, seq in traces.items() if t not in present
                  and not (seq <= delivered and (old_epoch, seq) in held))
    found = [e["data"] for e in after if e["event"] == "lossMarker"
             and e["trace_id"] not in traces
             and e["data"].get("reason") in ("quarantine", *NEW_EPOCH)]
    markers = len(found)
    started = sum(1 for e in after if e["event"] == "epochStarted")
    marked = sum(int(d.get("count", 0)) for d in found)
    verify_after = path.exists() and verify_ok(path, plant.pub)
    # verify on the damaged file never says OK when something is missing (it may also report
    # damage that loses nothing: an unreadable header is reported, then mended at start).
    ok = (run.up and reused == 0 and (markers > 0) == (missing > 0) and marked == missing
          and verify_after and not (verify_before and missing > 0))
    if ok and not keep:
        shutil.rmtree(case_dir)
    return Result(case.name, run.up, reused, missing, markers, marked, started, verify_after,
                  verify_before, ok, run.error, run.phases, time.monotonic() - began)


def run(sample: bool, work: Path, echo: Callable[[str], None] = print,
        only: str = "", keep: bool = False) -> list[Result]:
    plant = Plant(work / "plant")
    try:
        template = work / "template"
        build_box(template / "state", plant.signer)
        online_copy_older(template)
        rx_template = work / "rx-template.db"
        platform_copy(plant, template / "state" / "outbox.db", rx_template)
        old = rows(template / "state" / "outbox.db")
        results = []
        for case in cases(wal_frames(template / "state")):
            if (sample and not case.in_sample) or (only and not re.search(only, case.name)):
                continue
            results.append(run_case(case, plant, template, old, rx_template, work, keep))
            echo(line(results[-1]))
    finally:
        plant.close()
    return results


def platform_copy(plant: Plant, outbox: Path, rx_db: Path) -> None:
    """The platform's prior copy: a receiver database holding every event the outbox committed
    (the worst case for reuse: any (epoch, seq) used again is already there)."""
    from gateway.receiver.store import ReceiverStore

    plant.register(rx_db)
    store = ReceiverStore(rx_db)
    try:
        events = rows(outbox)
        conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
        raws = [body for (body,) in conn.execute("SELECT body FROM events ORDER BY seq")]
        conn.close()
        result = store.ingest(GATEWAY_ID, events[0]["epoch"], raws,
                              {plant.signer.kid: plant.signer.verify_key})
        assert result.error is None and result.high_water == len(raws), result
    finally:
        store.close()


def online_copy_older(template: Path) -> None:
    """The venue's backup: taken when the outbox held fewer events than it does now."""
    older = template.parent / "older"
    shutil.copytree(template / "state", older)
    conn = sqlite3.connect(older / "outbox.db", isolation_level=None)
    conn.execute("DELETE FROM events WHERE seq > 200")
    conn.close()
    online_copy(older / "outbox.db", template / "backup.db")
    shutil.rmtree(older)


def line(r: Result) -> str:
    return (f"{'ok ' if r.ok else 'BAD'} {r.case:<34} up={r.up!s:<5} reused={r.reused} "
            f"missing={r.missing:<3} markers={r.markers} marked={r.marked:<3} "
            f"epochStarted={r.started} verify "
            f"before={r.verify_before!s:<5} after={r.verify_after}"
            + (f"  {r.error}" if r.error else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", action="store_true", help="the CI subset")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--dir", type=Path, help="work here and keep failed cases' files")
    parser.add_argument("--only", default="", help="the cases whose name matches this regex")
    parser.add_argument("--keep", action="store_true", help="keep every case's files (--dir)")
    args = parser.parse_args()
    from gateway.logs import configure_logging

    configure_logging("critical", "console", stream=sys.stderr)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.dir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-corruption-")))
        results = run(args.sample, work, lambda text: print(text, flush=True), args.only,
                      args.keep)
    up = sum(r.up for r in results)
    print(f"cases {len(results)}, daemons up {up}, seqs reused "
          f"{sum(r.reused for r in results)}, cases with something missing "
          f"{sum(r.missing > 0 for r in results)}, cases with markers "
          f"{sum(r.markers > 0 for r in results)}, cases ok {sum(r.ok for r in results)} "
          f"({time.perf_counter() - started:.0f} s)")
    steps = [r.phases for r in results if r.phases]
    if steps:
        print("median seconds from the daemon's start: " + ", ".join(
            f"{name} {statistics.median(p[name] for p in steps if name in p):.2f}"
            for name in steps[0]) + f"; per case {statistics.median(r.case_s for r in results):.2f}"
              " (damage, daemon, checks)")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
