"""What a finished scenario proves and measures, read from its files after every process ended.

Conservation (the scenario's verdict):
  raised by the machines = acknowledged by them + lost by their own queue overflow, and every
  overflow loss is explained by exception 70 recorded as `bufferOverflow`;
  machine by machine, the multiset of acknowledged exception codes = the multiset recorded in the
  outbox (a code recorded more often than acknowledged is a duplicate, less often a loss);
  the outbox chain verifies (hash links, signatures, seq without gaps);
  the receiver holds every outbox event exactly once and byte for byte, with no bad signature,
  chain break or gap counted.

Latencies, all on the one host clock (loopback, same machine):
  capture -> durable: outbox `captured_at` (set while the event is sealed into its commit group,
  just before the FULL-sync commit) minus the envelope `timestamp` (when the gateway observed it;
  millisecond resolution). So it includes queueing to the writer and sealing, not the fsync.
  capture -> ack: receiver `received_at` (set in the receiver's ingest transaction, before it
  commits and acks) minus the envelope `timestamp`.
Queue lag: from the same columns, the largest number of events captured but not yet received at
any instant, and the oldest such event's age.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.outbox import iter_envelopes, open_readonly
from gateway.signing import decode_envelope, key_id, load_verify_key
from gateway.verify import verify_events

from .harness import GATEWAY_ID

BUFFER_OVERFLOW = 0x70


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def verify_outbox(path: Path, pub: Path) -> Any:
    verify_key = load_verify_key(pub)
    conn = open_readonly(path)
    try:
        return verify_events(iter_envelopes(conn), {key_id(verify_key): verify_key})
    finally:
        conn.close()


def conservation(base: Path, ledger: dict[str, Any], machines: int,
                 tail: dict[int, tuple[str | None, int | None, bytes]] | None = None
                 ) -> dict[str, Any]:
    """`tail`: rows seen while the run went on (OutboxTail), for outboxes that prune."""
    outbox = open_readonly(base / "state" / "outbox.db")
    try:
        outbox_rows = dict(iter_envelopes(outbox))
        # Every row the outbox ever held: what is there now, plus what the tail saw of rows
        # pruned since (delivered rows only; pruning never touches undelivered ones).
        ever: dict[int, tuple[str | None, int | None, bytes]] = dict(tail or {})
        for seq, machine, code, body in outbox.execute(
                "SELECT seq, machine, source_code, body FROM events"):
            ever[seq] = (machine, code, body)
        lost_acked = duplicated = unexplained = resent_total = dropped_total = 0
        # Rows pruned before the tail saw them: the receiver holds them (event type, machine),
        # only their SAS code is unknown here. A code the ledger misses is matched to such a row
        # of the same machine when that code was seen recorded as that event type elsewhere.
        types_of_code: dict[int, set[str]] = {}
        for _, code, body in ever.values():
            if code is not None:
                types_of_code.setdefault(code, set()).add(decode_envelope(body)["event"])
        unseen_rows = _unseen_rows(base, ever)
        matched_unseen = 0
        per_machine = []
        for i, machine in enumerate(ledger["machines"]):
            key = f"port{i + 1}/1"
            recorded = Counter(code for m, code, _ in ever.values()
                               if m == key and code is not None)
            acked = Counter(machine["acknowledged_codes"])
            missing = acked - recorded
            for event in unseen_rows.get(key, []):
                code = next((c for c in missing if event in types_of_code.get(c, ())), None)
                if code is not None:
                    missing[code] -= 1
                    recorded[code] += 1
                    missing = +missing
                    matched_unseen += 1
            lost = sum((acked - recorded).values())
            # A machine whose queue overflows drops its oldest entry even if it had already sent
            # it (SAS 2.1): such a record shows in the ledger as dropped, not acknowledged. The
            # simulator lists dropped codes, so only records beyond acknowledged + dropped count.
            dropped_sent = (recorded - acked) & Counter(machine.get("lost_codes", []))
            dup = sum((recorded - acked - dropped_sent).values())
            lost_acked += lost
            duplicated += dup
            overflow_markers = recorded[BUFFER_OVERFLOW]
            resent = resent_after_outage(ever, key) if dup else 0
            if machine["lost_by_overflow"] and not overflow_markers:
                unexplained += machine["lost_by_overflow"]
            resent = min(resent, dup)
            maybe_dropped = sum(dropped_sent.values())
            resent_total += resent
            dropped_total += maybe_dropped
            per_machine.append({"machine": key, "acknowledged": sum(acked.values()),
                                "recorded": sum(recorded.values()), "lost": lost,
                                "duplicated": dup, "resent_after_outage": resent,
                                "maybe_dropped_after_sending": maybe_dropped,
                                "duplicated_codes": sorted(
                                    f"{c:#04x}" for c in (recorded - acked - dropped_sent)
                                    .elements()),
                                "lost_codes": sorted(f"{c:#04x}" for c in (acked - recorded)
                                                     .elements()),
                                "lost_by_overflow": machine["lost_by_overflow"],
                                "overflow_markers": overflow_markers,
                                # Answers the simulator lost because it could not send them
                                # in time (a loaded host): silences the gateway had to survive.
                                "sim_late_answers": machine.get("late_answers", 0)})
    finally:
        outbox.close()
    rx = sqlite3.connect(f"file:{base / 'rx.db'}?mode=ro", uri=True)
    try:
        received = dict(rx.execute("SELECT seq, body FROM events WHERE gateway_id = ?",
                                   (GATEWAY_ID,)).fetchall())
        counters = rx.execute("SELECT received, duplicates, bad_signatures, chain_breaks, gaps "
                              "FROM counters WHERE gateway_id = ?", (GATEWAY_ID,)).fetchone()
    finally:
        rx.close()
    counters = dict(zip(("received", "duplicates", "bad_signatures", "chain_breaks", "gaps"),
                        counters or (0, 0, 0, 0, 0), strict=True))
    chain = verify_outbox(base / "state" / "outbox.db", base / "gw.pub")
    rx_chain = verify_received(received, base / "gw.pub")
    ever_bodies = {seq: body for seq, (_, _, body) in ever.items()}
    pruned = sorted(set(ever_bodies) - set(outbox_rows))
    # Rows pruned before the tail saw them: the receiver has them, but what they recorded is
    # not known here (0 when tailing kept up).
    unseen = sorted(set(received) - set(ever_bodies))
    missing_at_receiver = len(set(ever_bodies) - set(received))
    extra_at_receiver = len([s for s in unseen if s > max(outbox_rows, default=0)])
    differing = sum(1 for s, b in received.items() if s in ever_bodies and ever_bodies[s] != b)
    balance = ledger["raised"] - ledger["acknowledged"] - ledger["lost_by_overflow"] \
        - ledger["pending"]
    return {
        "raised": ledger["raised"], "acknowledged": ledger["acknowledged"],
        "pending": ledger["pending"], "lost_by_overflow": ledger["lost_by_overflow"],
        "ledger_balance": balance,
        "outbox_events": len(outbox_rows), "received": len(received),
        "lost_acknowledged": lost_acked, "duplicated": duplicated,
        "duplicated_resent_after_outage": resent_total,
        "duplicated_maybe_dropped_after_sending": dropped_total,
        "unexplained_losses": unexplained,
        "missing_at_receiver": missing_at_receiver, "extra_at_receiver": extra_at_receiver,
        "differing_bytes": differing,
        "received_identical": not differing and not missing_at_receiver,
        "pruned_from_outbox": len(pruned), "pruned_unseen": len(unseen),
        "pruned_unseen_matched_by_type": matched_unseen,
        "receiver_chain_ok": rx_chain.ok, "receiver_chain_break": None if rx_chain.ok else
        f"seq {rx_chain.break_at}: {rx_chain.reason}",
        "receiver_counters": counters,
        "chain_ok": chain.ok, "chain_kids": list(getattr(chain, "kids", ())),
        "chain_break": None if chain.ok else f"seq {chain.break_at}: {chain.reason}",
        "per_machine": per_machine,
    }


def _unseen_rows(base: Path, ever: dict[int, Any]) -> dict[str, list[str]]:
    """machine -> event types of receiver rows the outbox (and its tail) never showed."""
    rx = sqlite3.connect(f"file:{base / 'rx.db'}?mode=ro", uri=True)
    try:
        rows = rx.execute("SELECT seq, body FROM events WHERE gateway_id = ?",
                          (GATEWAY_ID,)).fetchall()
    finally:
        rx.close()
    out: dict[str, list[str]] = {}
    for seq, body in rows:
        if seq in ever:
            continue
        env = decode_envelope(body)
        machine = env.get("machine") or {}
        if machine:
            out.setdefault(f"{machine.get('port')}/{machine.get('address')}", []).append(
                env["event"])
    return out


def verify_received(received: dict[int, bytes], pub: Path) -> Any:
    """The receiver's copy, verified end to end like the outbox (first key + keyRotated)."""
    verify_key = load_verify_key(pub)
    return verify_events(sorted(received.items()), {key_id(verify_key): verify_key})


def resent_after_outage(ever: dict[int, tuple[str | None, int | None, bytes]], key: str) -> int:
    """Records of `key` that repeat (same code, same data) the machine's last recorded exception
    with a deviceOffline of that machine in between: an exception the machine sent, the gateway
    made durable, and the machine sent again after an outage (a power cycle between its answer
    and the implied ACK). These are the duplicates the serial-fault scenario can produce; the
    count tells them apart from any other kind."""
    last: tuple[int, Any] | None = None
    outage = False
    count = 0
    for seq in sorted(ever):
        machine, code, body = ever[seq]
        if machine != key:
            continue
        env = decode_envelope(body)
        if env.get("event") == "deviceOffline":
            outage = True
            continue
        if code is None:
            continue
        data = env.get("data")
        if outage and last == (code, data):
            count += 1
        last, outage = (code, data), False
    return count


def timings(base: Path) -> dict[str, Any]:
    """Latencies, queue lag, per-machine timestamp order, event-type counts, trace excerpt."""
    outbox = open_readonly(base / "state" / "outbox.db")
    rx = sqlite3.connect(f"file:{base / 'rx.db'}?mode=ro", uri=True)
    try:
        captured = dict(outbox.execute("SELECT seq, captured_at FROM events"))
        types = Counter(t for (t,) in outbox.execute("SELECT type FROM events"))
        received_at = dict(rx.execute("SELECT seq, received_at FROM events WHERE gateway_id = ?",
                                      (GATEWAY_ID,)))
        envelopes = []
        for seq, body in iter_envelopes(outbox):
            env = decode_envelope(body)
            envelopes.append((seq, env))
    finally:
        outbox.close()
        rx.close()
    durable, acked, skew = [], [], []
    last_ts: dict[str, tuple[int, float]] = {}
    inversions, max_inversion_ms = 0, 0.0
    for seq, env in envelopes:
        ts = parse_ts(env["timestamp"])
        if seq in captured:
            durable.append((captured[seq] - ts) * 1000)
            skew.append(abs(captured[seq] - ts))
        if seq in received_at:
            acked.append((received_at[seq] - ts) * 1000)
        machine = env.get("machine") or {}
        if machine:
            key = f"{machine.get('port')}/{machine.get('address')}"
            if key in last_ts and ts < last_ts[key][1]:
                inversions += 1
                max_inversion_ms = max(max_inversion_ms, (last_ts[key][1] - ts) * 1000)
            last_ts[key] = (seq, ts)
    # Queue lag: a sweep over capture (+1) and receipt (-1) instants.
    moments = sorted([(t, 1) for t in captured.values()]
                     + [(t, -1) for s, t in received_at.items() if s in captured])
    depth = max_depth = 0
    for _, step in moments:
        depth += step
        max_depth = max(max_depth, depth)
    ages = [received_at[s] - captured[s] for s in captured if s in received_at]
    first = min(captured.values(), default=0.0)
    last = max(list(captured.values()) + list(received_at.values()), default=0.0)
    excerpt = []
    machine_events = [(s, e) for s, e in envelopes if e.get("machine")]
    picks = machine_events[:3] + machine_events[len(machine_events) // 2:][:2] \
        + [(s, e) for s, e in envelopes if e["event"] in ("uplinkDown", "uplinkUp",
                                                          "bufferOverflow", "lossMarker",
                                                          "keyRotated", "diskFull",
                                                          "diskSpaceRestored")][:6]
    for seq, env in picks:
        excerpt.append({
            "seq": seq, "trace_id": env["trace_id"], "id": env["id"], "event": env["event"],
            "machine": env.get("machine"), "timestamp": env["timestamp"],
            "captured_at": captured.get(seq), "received_at": received_at.get(seq),
            "hash": env["hash"].hex()[:16] if isinstance(env.get("hash"), bytes) else None,
            "kid": env.get("kid")})
    return {
        "first_capture": first, "last_activity": last,
        "capture_to_durable_ms": {"p50": pct(durable, .5), "p95": pct(durable, .95),
                                  "p99": pct(durable, .99), "max": pct(durable, 1.0)},
        "capture_to_ack_ms": {"p50": pct(acked, .5), "p95": pct(acked, .95),
                              "p99": pct(acked, .99), "max": pct(acked, 1.0)},
        "max_queue_lag_events": max_depth,
        "max_queue_age_s": round(max(ages, default=0.0), 3),
        "timestamp_vs_capture_max_s": round(max(skew, default=0.0), 3),
        "timestamp_inversions_per_machine": inversions,
        "max_timestamp_inversion_ms": round(max_inversion_ms, 2),
        "event_types": dict(types.most_common()),
        "trace_excerpt": excerpt,
    }


def log_excerpt(path: Path, keep: int = 8) -> tuple[list[dict[str, Any]], int, int]:
    """(a few interesting JSON log lines, warnings, errors) from a JSON-lines log file."""
    interesting = ("gateway ready", "uplink up", "uplink down", "uplink connect failed",
                   "outbox open", "gateway stopped", "stopping")
    lines, warnings, errors = [], 0, 0
    if not path.exists():
        return lines, 0, 0
    for raw in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        level = entry.get("level")
        warnings += level == "warning"
        errors += level in ("error", "critical")
        if entry.get("event") in interesting and len(lines) < keep:
            lines.append(entry)
    return lines, warnings, errors


def restart_to_streaming(log: Path, starts: list[float]) -> dict[str, Any]:
    """For every gateway start (process spawned), the time until its first "uplink up" log line
    (streaming again), when that came before the next start (a kill may land earlier)."""
    ups = []
    if log.exists():
        for raw in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if entry.get("event") == "uplink up":
                ups.append(parse_ts(entry["timestamp"]))
    ups.sort()
    delays = []
    for i, start in enumerate(starts):
        nxt = starts[i + 1] if i + 1 < len(starts) else float("inf")
        first = next((u for u in ups if start <= u < nxt), None)
        if first is not None:
            delays.append(first - start)
    return {"starts": len(starts), "reached_streaming": len(delays),
            "p50_s": pct(delays, .5), "p99_s": pct(delays, .99), "max_s": pct(delays, 1.0)}
