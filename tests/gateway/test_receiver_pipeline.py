"""The receiver's fast paths keep its guarantees: frames verified in parallel threads and committed
in groups still stop at the first bad event (ack up to the last good one, nothing after it stored),
and the no-sort hash check accepts exactly what the spec's canonical check accepts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import msgpack
import pytest
import trio

from gateway.receiver import ReceiverStore
from gateway.receiver.store import check_stored, verify_events
from gateway.signing import GENESIS, ChainBreak, canonical, decode_envelope, seal
from gateway.uplink import protocol as proto
from tests.gateway.test_receiver import TOKEN, peer, receive, receiver
from tests.gateway.uplink_fakes import FakeOutbox, register


def frames_of(rows: list[bytes], size: int) -> list[list[bytes]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def tamper_data(raw: bytes) -> bytes:
    """Same hash and signature, other payload (still canonical): the hash no longer matches."""
    envelope = decode_envelope(raw)
    envelope["data"] = {"wager": {"minor": 1_000_000, "currency": "USD"}}
    return canonical(envelope)


def relink(outbox: FakeOutbox, seq: int) -> None:
    """Re-seal `seq` (really signed) with a prev_hash that is not its predecessor's hash."""
    envelope = decode_envelope(outbox.rows[seq - 1])
    _, raw = seal(envelope, bytes(range(32)), outbox.signer)
    outbox.rows[seq - 1] = raw


async def send_back_to_back(ws: object, frames: list[list[bytes]]) -> None:
    """Every frame at once, before any ack: the receiver has several in its pipeline."""
    for rows in frames:
        await ws.send_message(proto.encode(proto.Events(tuple(rows))))  # type: ignore[attr-defined]


async def acks_then_close(ws: object) -> tuple[list[int], proto.Error | None, int | None]:
    """Read to the end of the connection: the ack seqs, the error frame, the close code."""
    from trio_websocket import ConnectionClosed

    acks: list[int] = []
    error = None
    try:
        while True:
            message = await receive(ws)
            if isinstance(message, proto.Ack):
                acks.append(message.seq)
            elif isinstance(message, proto.Error):
                error = message
    except ConnectionClosed as closed:
        return acks, error, closed.reason.code
    raise AssertionError("unreachable")


@pytest.mark.parametrize("bad", ["signature", "hash"])
async def test_bad_event_mid_pipeline_acks_up_to_the_last_good_one(tmp_path: Path,
                                                                   bad: str) -> None:
    outbox = FakeOutbox()
    outbox.extend(400)
    if bad == "signature":
        outbox.corrupt_signature(250)
    else:
        outbox.rows[249] = tamper_data(outbox.rows[249])
    with trio.fail_after(20):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            async with peer(handle, outbox) as ws:
                await receive(ws)
                await send_back_to_back(ws, frames_of(outbox.rows, 40))  # 10 frames
                acks, error, code = await acks_then_close(ws)
            figures = handle.store.figures(outbox.gateway_id)
            stored = [seq for seq, _ in handle.store.events(outbox.gateway_id, outbox.epoch)]
    # One ack per frame up to the bad one (in order; several may share one commit), the last
    # one covering exactly the events before the bad event; nothing after it is stored.
    assert acks == [40, 80, 120, 160, 200, 240, 249]
    assert error is not None and error.code == code == proto.CLOSE_INTEGRITY
    assert stored == list(range(1, 250))
    assert figures["bad_signatures"] == 1 and figures["high_water"] == 249


async def test_broken_link_mid_pipeline_is_stored_and_flagged(tmp_path: Path) -> None:
    """A good signature over a wrong prev_hash is authentic: stored, counted, the stream goes on
    (docs/uplink-protocol.md section 3)."""
    outbox = FakeOutbox()
    outbox.extend(120)
    relink(outbox, 70)
    with trio.fail_after(20):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            async with peer(handle, outbox) as ws:
                await receive(ws)
                await send_back_to_back(ws, frames_of(outbox.rows, 30))
                acks = [await receive(ws) for _ in range(4)]
            figures = handle.store.figures(outbox.gateway_id)
    assert acks == [proto.Ack(outbox.epoch, seq) for seq in (30, 60, 90, 120)]
    # 70 does not link to 69, and 71 (linked to the old 70) does not link to the new 70.
    assert figures["chain_breaks"] == 2 and figures["bad_signatures"] == 0
    assert figures["stored"] == 120


async def test_protocol_violation_after_frames_in_flight(tmp_path: Path) -> None:
    """Frames read before a malformed one are committed and acked before the close 4002."""
    outbox = FakeOutbox()
    outbox.extend(90)
    with trio.fail_after(20):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            async with peer(handle, outbox) as ws:
                await receive(ws)
                await send_back_to_back(ws, frames_of(outbox.rows, 30))
                await ws.send_message(b"\xc1")  # type: ignore[attr-defined]  # never msgpack
                acks, error, code = await acks_then_close(ws)
            figures = handle.store.figures(outbox.gateway_id)
    assert acks == [30, 60, 90]
    assert error is not None and error.code == code == proto.CLOSE_PROTOCOL
    assert figures["stored"] == 90


def test_ingest_frames_is_one_commit_with_one_result_per_frame(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(12)
    outbox.corrupt_signature(10)
    store = ReceiverStore(tmp_path / "rx.db")
    register(store, outbox, TOKEN)
    keys = store.keys(outbox.gateway_id)
    frames = [verify_events(rows, keys) for rows in
              (outbox.rows[0:4], outbox.rows[2:6], outbox.rows[7:11], outbox.rows[11:12])]
    results = store.ingest_frames(outbox.gateway_id, outbox.epoch, frames, keys)
    # frame 2 repeats 3-4 (duplicates) and adds 5-6; frame 3 skips 7 (a gap), stores 8-9 and
    # stops at the bad 10; frame 4 is never looked at.
    assert [r.high_water for r in results] == [4, 6, 9]
    assert [(r.stored, r.duplicates) for r in results] == [(4, 0), (2, 2), (2, 0)]
    assert results[2].gaps == [(7, 7)] and results[2].error_code == proto.CLOSE_INTEGRITY
    assert results[0].error is None and results[1].error is None
    figures = store.figures(outbox.gateway_id)
    assert figures == {"received": 8, "duplicates": 2, "bad_signatures": 1, "chain_breaks": 1,
                       "gaps": 1, "high_water": 9, "stored": 8}
    store.close()


def test_check_stored_matches_the_canonical_check() -> None:
    outbox = FakeOutbox()
    outbox.extend(2)
    keys = {outbox.signer.kid: outbox.signer.verify_key}
    envelope = decode_envelope(outbox.rows[1])
    assert check_stored(envelope, keys) == envelope["hash"]
    # Keys not in canonical order (another msgpack writer): the spec's canonical body is used.
    shuffled = msgpack.unpackb(msgpack.packb(dict(reversed(list(envelope.items())))))
    assert list(shuffled) != sorted(shuffled)
    assert check_stored(shuffled, keys) == envelope["hash"]
    [checked] = verify_events([msgpack.packb(shuffled)], keys)
    assert checked.digest == envelope["hash"]


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("hash", 7, "bad-hash"),
    ("prev_hash", None, "bad-hash"),
    ("sig", "not bytes", "bad-hash"),
    ("sig", b"\x00" * 10, "bad-signature"),  # right type, wrong length
    ("data", {"a": 1, b"b": 2}, "bad-hash"),  # keys that do not sort: no canonical form
])
def test_check_stored_malformed_fields_are_chain_breaks(field: str, value: object,
                                                        reason: str) -> None:
    outbox = FakeOutbox()
    outbox.extend(1)
    keys = {outbox.signer.kid: outbox.signer.verify_key}
    envelope = decode_envelope(outbox.rows[0])
    envelope[field] = value
    with pytest.raises(ChainBreak) as broken:
        check_stored(envelope, keys)
    assert broken.value.reason == reason


@pytest.mark.parametrize("kid", [["a", "list"], "ed25519:0000000000000000"])
def test_check_stored_unknown_or_malformed_kid(kid: object) -> None:
    """Hash and signature are right, but the kid names no key we hold (or is not a name)."""
    outbox = FakeOutbox()
    outbox.extend(1)
    keys = {outbox.signer.kid: outbox.signer.verify_key}
    signer = SimpleNamespace(kid=kid, key=outbox.signer.key)
    _, raw = seal(decode_envelope(outbox.rows[0]), GENESIS, signer)  # type: ignore[arg-type]
    with pytest.raises(ChainBreak) as broken:
        check_stored(decode_envelope(raw), keys)
    assert broken.value.reason == "unknown-key"
