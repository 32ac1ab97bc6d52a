"""The test vectors' later epochs (docs/uplink-protocol.md sections 5 and 12): how a stream
starts again, and holes, as the outbox writes them (gateway/outbox/epochs.py, quarantine.py).

  * `rollback`: the outbox came back one seq short of its witness. Seq 1 is a `lossMarker`
    naming the missing seq of the first epoch (`count` = the range minus what is salvaged);
    the undelivered event the outbox still had follows, re-sealed as seq 2 with its data,
    timestamp and trace id unchanged. Then a hole at the end (P-HOLE-1 (a)): seqs 7..8 gone,
    the marker takes seq 9 and links to seq 6.
  * `epoch-started`: that outbox became unreadable with nothing missing (the one undelivered
    row salvaged), so seq 1 is an `epochStarted`. Then a hole in the middle (P-HOLE-1 (b)):
    seq 6 gone, seq 7 arrives as a gap, and the marker at seq 9 closes it by `resume_hash`.

Both epochs are signed by key_2 (learnt from the first epoch's keyRotated). Invalid streams
show what a verifier refuses. Pure: no I/O."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from gateway.signing import GENESIS, INTEGRITY_FIELDS, Signer, canonical, chain_hash, seal

__all__ = ["CORRUPT_EPOCH", "ROLLBACK_EPOCH", "build"]

ROLLBACK_EPOCH = "8899aabbccddeeff"
CORRUPT_EPOCH = "fedcba9876543210"

Sealed = list[tuple[dict[str, Any], bytes]]
# A step of a stream: (type, data); a salvaged envelope (dict); None, a seq the outbox lost (a
# hole); or a callable given the stream so far that returns (type, data).


def _quarantine(first: int, last: int, resume: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"reason": "quarantine", "count": last - first + 1,
                            "first_seq": first, "last_seq": last,
                            "detail": "damaged or missing rows moved aside: hash mismatch"}
    if resume is not None:
        data["resume_hash"] = resume
    return data


def _stream(epoch: str, hour: int, steps: list[Any], envelope: Callable[..., dict[str, Any]],
            signer: Signer) -> Sealed:
    """Seal `steps` as seqs 1, 2, … of `epoch`; a None step is a seq the outbox no longer has
    (sealed, so an event after it links to it, then left out); a quarantine marker links to
    the last event kept, as the outbox writes it. A callable step gets the stream so far."""
    out: Sealed = []
    prev = GENESIS
    for seq, step in enumerate(steps, start=1):
        if callable(step):
            step = step(out)
        if isinstance(step, dict):  # salvaged: the old envelope's fields, a new place
            env = {k: v for k, v in step.items()
                   if k not in (*INTEGRITY_FIELDS, "prev_hash", "kid")}
            env.update(id=env["id"].rsplit(":", 2)[0] + f":{epoch}:{seq}", seq=seq, epoch=epoch)
        else:
            event_type, data = step if step is not None else ("doorOpened", {"door": "drop"})
            env = envelope(event_type, seq, data, epoch=epoch,
                           timestamp=f"2026-11-21T{hour:02d}:00:{seq:02d}.000Z",
                           trace_id=f"{epoch[:8]}{seq:08x}")
        if env["event"] == "lossMarker" and env["data"]["reason"] == "quarantine":
            prev = out[-1][0]["hash"]  # a marker follows the last row the outbox still has
        sealed, stored = seal(env, prev, signer)
        prev = sealed["hash"]
        if step is not None:
            out.append((sealed, stored))
    return out


def _resealed(sealed: dict[str, Any], prev: bytes, signer: Signer, **data: Any
              ) -> dict[str, Any]:
    out = {k: v for k, v in sealed.items() if k not in INTEGRITY_FIELDS}
    out["data"] = {**out["data"], **data}
    out["prev_hash"] = prev
    out["hash"] = chain_hash(prev, canonical(out))
    out["sig"] = signer.key.sign(out["hash"]).signature
    return out


def build(first: Sealed, envelope: Callable[..., dict[str, Any]],
          entry: Callable[[dict[str, Any], bytes, Signer], dict[str, Any]], signer: Signer
          ) -> dict[str, Any]:
    """The `epochs` and `invalid_streams` parts of the vectors, after the first epoch `first`;
    `envelope` makes an unsealed envelope (machine events carry the replaced machine)."""
    last = first[-1][0]["seq"]
    rollback = _stream(ROLLBACK_EPOCH, 7, [
        ("lossMarker", {"reason": "rollback", "previous_epoch": first[0][0]["epoch"],
                        "detail": f"the outbox ends at seq {last - 1} but this gateway "
                                  f"committed up to seq {last} (torn write-ahead log or "
                                  f"restored file)",
                        "first_seq": last, "last_seq": last, "count": 1, "salvaged": 1,
                        "salvaged_first_seq": last - 1, "salvaged_last_seq": last - 1}),
        copy.deepcopy(first[-2][0]),
        ("gatewayStarted", {"version": "0.1.0", "clock_synchronised": True}),
        ("uplinkUp", {"down_for_s": 4.5, "clock_synchronised": True}),
        ("deviceOnline", {}),
        ("betPlaced", {"wager_credits": 25, "wager": {"minor": 25, "currency": "USD"}}),
        None, None,
        ("lossMarker", _quarantine(7, 8)),
        ("gameEnded", {"win_credits": 0, "win": {"minor": 0, "currency": "USD"}}),
    ], envelope, signer)
    corrupt_steps: list[Any] = [
        ("epochStarted", {"reason": "database-corrupt", "previous_epoch": ROLLBACK_EPOCH,
                          "detail": "unreadable outbox moved to "
                                    "outbox.db.corrupt-20261121T075959Z: database disk image "
                                    "is malformed",
                          "salvaged": 1, "salvaged_first_seq": 10, "salvaged_last_seq": 10}),
        copy.deepcopy(rollback[-1][0]),
        ("gatewayStarted", {"version": "0.1.0", "clock_synchronised": True}),
        ("uplinkUp", {"down_for_s": 12.25, "clock_synchronised": True}),
        ("betPlaced", {"wager_credits": 50, "wager": {"minor": 50, "currency": "USD"}}),
        None,
        ("billAccepted", {"amount": {"minor": 2000, "currency": "USD"}, "denomination_code": 7,
                          "country_code": 0}),
        ("doorOpened", {"door": "main"}),
        lambda done: ("lossMarker", _quarantine(6, 6, done[5][0]["prev_hash"].hex())),
        ("doorClosed", {"door": "main"}),
    ]
    corrupt = _stream(CORRUPT_EPOCH, 8, corrupt_steps, envelope, signer)
    return {"epochs": [
        _described("rollback", rollback, entry, signer,
                   "new epoch after a rollback: seq 1 lossMarker with a range; seq 2 salvaged; "
                   "a hole at the end (seqs 7..8), its marker at seq 9 links to seq 6",
                   gaps=[[7, 8]]),
        _described("epoch-started", corrupt, entry, signer,
                   "new epoch with nothing missing: seq 1 epochStarted; seq 2 salvaged; a hole "
                   "in the middle (seq 6): seq 7 arrives as a gap, the marker at seq 9 closes "
                   "it with resume_hash", gaps=[[6, 6]]),
    ], "invalid_streams": _invalid(first, corrupt, signer)}


def _described(name: str, stream: Sealed, entry: Callable[..., dict[str, Any]], signer: Signer,
               what: str, gaps: list[list[int]]) -> dict[str, Any]:
    return {"name": name, "epoch": stream[0][0]["epoch"], "what": what,
            "events": [entry(sealed, stored, signer) for sealed, stored in stream],
            "verify": {"ok": True},
            "receiver": {"high_water": stream[-1][0]["seq"], "gaps": len(gaps),
                         "chain_breaks": len(gaps), "missing": gaps}}


def _invalid(first: Sealed, corrupt: Sealed, signer: Signer) -> list[dict[str, Any]]:
    by_seq = {sealed["seq"]: sealed for sealed, _ in corrupt}
    # The marker names the hole but binds the wrong right side: seq 7's own hash.
    wrong = _resealed(by_seq[9], by_seq[8]["hash"], signer, resume_hash=by_seq[7]["hash"].hex())
    # epochStarted linked to the previous epoch's last event instead of 32 zero bytes.
    linked = _resealed(by_seq[1], first[-1][0]["hash"], signer)
    cases = [
        ("wrong-resume-hash", "epoch-started's seqs 1..8, then its seq 9 marker re-signed with "
         "resume_hash = the hash of seq 7, not seq 7's prev_hash",
         [*(by_seq[s] for s in range(1, 9) if s != 6), wrong], 9,
         "a quarantine lossMarker names a hole the chain does not have"),
        ("hole-never-closed", "epoch-started's seqs 1..8 (the hole at seq 6 stays open)",
         [by_seq[s] for s in range(1, 9) if s != 6], 7,
         "gap: seqs 6..6 missing and no lossMarker names them"),
        ("new-epoch-linked-to-the-old", "epoch-started's seq 1 re-signed with prev_hash = the "
         "first epoch's last hash (P-EPOCH-1: it must be 32 zero bytes)", [linked], 1,
         "bad-link: seq 1 does not follow the previous event"),
    ]
    return [{"name": name, "what": what,
             "stored_hex": [canonical(env).hex() for env in envs],
             "verify": {"ok": False, "break_at": at, "reason": reason}}
            for name, what, envs, at, reason in cases]
