"""Corruption suite (in the style of Vector's buffer tests): damage an outbox every way storage can,
start the outbox as the daemon runs it, and check it never loses anything silently.

    .venv/bin/python bench/corruption.py [--sample] [--json FILE]

Each case builds a box (an outbox with a live write-ahead log, its witness, and a platform that
holds every event committed: the worst case for reuse), damages it, then starts the outbox the
way the daemon does: the writer runs, a poller keeps appending, the uplink's and the feed's
read-back reads every row, then a second start. It checks:
  up        the outbox opened, kept appending and reading (no exception), and opened again
  reused    (epoch, seq) pairs it holds whose hash differs from the platform's copy: must be 0
  marker    a lossMarker was written if and only if events are missing (by trace id: neither
            the row nor a salvaged copy is in the outbox)
  verify    `casino-gateway outbox verify` on the result: OK (every hole explained), and on the
            damaged file before the start: OK exactly when nothing was damaged
Cases: the WAL cut at every frame boundary and at offsets inside each frame (frame header,
page start, page middle); a flipped byte in each page class (database header, schema, table
interior, table leaf, index, overflow, freelist, WAL header, WAL frame header) and in the
row at each position (oldest, middle, inside the newest 64, newest); an older backup restored;
the database deleted. `--sample` is the subset tests/test_corruption_short.py runs in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import nacl.signing
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    verify_after: bool
    verify_before: bool
    ok: bool
    error: str = ""


def settings(path: Path) -> OutboxSettings:
    # Retention never prunes here (the platform's acks are not modelled): every row stays.
    return OutboxSettings(path=path, gateway_id="gw-corrupt", signing_process=False,
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


def flip_schema(box: Path) -> None:
    """A byte of the events table's CREATE statement in the schema (page 1)."""
    at = (box / "outbox.db").read_bytes()[:PAGE].find(b"CREATE TABLE events")
    flip(box / "outbox.db", at + 8)


def restore_backup(box: Path) -> None:
    shutil.copyfile(box / "backup.db", box / "outbox.db")
    (box / "outbox.db-wal").unlink(missing_ok=True)


def delete_database(box: Path) -> None:
    for name in ("outbox.db", "outbox.db-wal"):
        (box / name).unlink(missing_ok=True)


def cases(frames: int) -> Iterator[Case]:
    yield Case("intact", lambda box: None, True)
    for frame in range(frames + 1):
        start = WAL_HEADER + frame * (FRAME_HEADER + PAGE)
        yield Case(f"wal-cut-frame-{frame}", cut_wal(start), frame in (0, frames // 2, frames))
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
                   kind in ("interior", "leaf", "freelist"))
    yield Case("flip-wal-header", lambda box: flip(box / "outbox.db-wal", 20), True)
    yield Case("flip-wal-frame-header",
               lambda box: flip(box / "outbox.db-wal", WAL_HEADER + 3 * (FRAME_HEADER + PAGE) + 4))
    for position in ("oldest", "middle", "newest64", "newest"):
        yield Case(f"flip-row-{position}", flip_row(position),
                   position in ("oldest", "middle", "newest64"))
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


async def run_daemon(outbox: Outbox, polls: int) -> None:
    """The writer, a poller appending, and the read-back the uplink and the feed do."""
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run_writer)
        for i in range(polls):
            await outbox.append(draft(10_000 + i))
            after = 0
            while page := await outbox.read_after(after, 500):
                for _, body in page:
                    decode_envelope(body)
                after = page[-1][0]
        with trio.fail_after(10):  # damage found on read is handled by the next commit
            while outbox._damaged:
                await outbox.append(draft(20_000))
        nursery.cancel_scope.cancel()


def run_case(case: Case, template: Path, work: Path, signer: Signer, pub: Path) -> Result:
    box = work / case.name
    shutil.copytree(template, box)
    path = box / "outbox.db"
    platform = {(e["epoch"], e["seq"]): e["hash"] for e in rows(template / "outbox.db")}
    traces = {e["trace_id"]: (e["epoch"], e["seq"]) for e in rows(template / "outbox.db")}
    case.damage(box)
    verify_before = path.exists() and verify_ok(path, pub)
    up, error = True, ""
    try:
        outbox = Outbox.open(settings(path), signer)
        trio.run(run_daemon, outbox, 5)
        outbox.close()
        again = Outbox.open(settings(path), signer)
        trio.run(run_daemon, again, 2)
        again.close()
    except Exception as err:  # a case that stops the outbox is the failure being counted
        up, error = False, f"{type(err).__name__}: {err}"
    after = rows(path) if up else []
    reused = sum(1 for e in after if platform.get((e["epoch"], e["seq"]), e["hash"]) != e["hash"])
    present = {e["trace_id"] for e in after}
    missing = sum(1 for t in traces if t not in present)
    original = set(platform)
    markers = sum(1 for e in after if e["event"] == "lossMarker"
                  and (e["epoch"], e["seq"]) not in original)
    verify_after = up and verify_ok(path, pub)
    # verify on the damaged file never says OK when something is missing (it may also report
    # damage that loses nothing: an unreadable header is reported, then mended at start).
    ok = (up and reused == 0 and (markers > 0) == (missing > 0) and verify_after
          and not (verify_before and missing > 0))
    return Result(case.name, up, reused, missing, markers, verify_after, verify_before, ok, error)


def run(sample: bool, work: Path) -> list[Result]:
    signer = Signer(nacl.signing.SigningKey.generate())
    pub = work / "gw.pub"
    pub.write_text(f"{bytes(signer.verify_key).hex()} {signer.kid}\n")
    template = work / "template"
    build_box(template, signer)
    online_copy_older(template)
    results = []
    for case in cases(wal_frames(template)):
        if sample and not case.in_sample:
            continue
        results.append(run_case(case, template, work, signer, pub))
    return results


def online_copy_older(template: Path) -> None:
    """The venue's backup: taken when the outbox held fewer events than it does now."""
    older = template.parent / "older"
    shutil.copytree(template, older)
    conn = sqlite3.connect(older / "outbox.db", isolation_level=None)
    conn.execute("DELETE FROM events WHERE seq > 200")
    conn.close()
    online_copy(older / "outbox.db", template / "backup.db")
    shutil.rmtree(older)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", action="store_true", help="the CI subset")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    from gateway.logs import configure_logging

    configure_logging("critical", "console", stream=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-corruption-") as tmp:
        results = run(args.sample, Path(tmp))
    for r in results:
        print(f"{'ok ' if r.ok else 'BAD'} {r.case:<34} up={r.up!s:<5} reused={r.reused} "
              f"missing={r.missing:<3} markers={r.markers} verify before={r.verify_before!s:<5}"
              f" after={r.verify_after}" + (f"  {r.error}" if r.error else ""))
    up = sum(r.up for r in results)
    print(f"cases {len(results)}, outboxes still up {up}, seqs reused "
          f"{sum(r.reused for r in results)}, cases ok {sum(r.ok for r in results)} "
          f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
