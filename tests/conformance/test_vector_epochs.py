"""The vectors' later epochs (docs/vectors/uplink-v1.json `epochs`, `invalid_streams`) against
the project's code: each new epoch starts at seq 1 with 32 zero bytes and names the one before,
salvaged events keep their content, holes are explained as P-HOLE-1 says, the offline verifier
accepts the valid streams and refuses the invalid ones where stated, and the reference receiver
counts what §8 says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from gateway.catalogue import validate_envelope
from gateway.receiver.store import ReceiverStore
from gateway.signing import GENESIS, check_event, decode_envelope, key_id
from gateway.uplink import vectors
from gateway.verify import verify_events

V = json.loads(vectors.VECTORS_PATH.read_text())
STREAMS = {s["name"]: s for s in V["epochs"]}


def key_2() -> dict[str, nacl.signing.VerifyKey]:
    vk = nacl.signing.VerifyKey(bytes.fromhex(V["keys"]["key_2"]["public_key_hex"]))
    return {key_id(vk): vk}


def envelopes(stream: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {e["seq"]: decode_envelope(bytes.fromhex(e["stored_hex"])) for e in stream["events"]}


@pytest.mark.parametrize("stream", V["epochs"], ids=lambda s: s["name"])
def test_each_new_epoch_verifies_from_32_zero_bytes(stream: dict[str, Any]) -> None:
    events = envelopes(stream)
    assert events[1]["prev_hash"] == GENESIS
    for env in events.values():
        assert env["epoch"] == stream["epoch"]
        validate_envelope(env)
        check_event(env, key_2(), None)
    rows = [(e["seq"], bytes.fromhex(e["stored_hex"])) for e in stream["events"]]
    report = verify_events(rows, key_2())
    assert report.ok, report.reason
    assert report.checked == len(rows)


def test_epochs_are_ordered_by_their_previous_epoch_link() -> None:
    chain = [V["epoch"], *(s["epoch"] for s in V["epochs"])]
    for before, stream in zip(chain, V["epochs"], strict=False):
        assert envelopes(stream)[1]["data"]["previous_epoch"] == before


def _old_events(epoch: str) -> dict[int, dict[str, Any]]:
    if epoch == V["epoch"]:
        return {e["seq"]: decode_envelope(bytes.fromhex(e["stored_hex"])) for e in V["chain"]}
    return envelopes(next(s for s in V["epochs"] if s["epoch"] == epoch))


@pytest.mark.parametrize("stream", V["epochs"], ids=lambda s: s["name"])
def test_salvaged_events_keep_their_content_at_seq_2_on(stream: dict[str, Any]) -> None:
    events = envelopes(stream)
    first = events[1]["data"]
    old = _old_events(first["previous_epoch"])
    olds = range(first["salvaged_first_seq"], first["salvaged_last_seq"] + 1)
    assert first["salvaged"] == len(olds)
    for n, old_seq in enumerate(olds):
        copy, original = events[2 + n], old[old_seq]
        for name in ("event", "data", "timestamp", "trace_id", "machine", "schema_version"):
            assert copy[name] == original[name], name
    # count: the range the outbox no longer has, minus the salvaged seqs inside it.
    if events[1]["event"] == "lossMarker":
        in_range = [s for s in olds if first["first_seq"] <= s <= first["last_seq"]]
        assert first["count"] == first["last_seq"] - first["first_seq"] + 1 - len(in_range) > 0


def test_a_hole_at_the_end_links_its_marker_to_the_event_before_it() -> None:
    events = envelopes(STREAMS["rollback"])
    marker = next(e for e in events.values() if e["data"].get("reason") == "quarantine")
    data = marker["data"]
    assert "resume_hash" not in data and marker["seq"] == data["last_seq"] + 1
    assert marker["prev_hash"] == check_event(events[data["first_seq"] - 1], key_2(), None)


def test_a_hole_in_the_middle_is_closed_by_resume_hash() -> None:
    events = envelopes(STREAMS["epoch-started"])
    marker = next(e for e in events.values() if e["data"].get("reason") == "quarantine")
    data = marker["data"]
    after = events[data["last_seq"] + 1]
    assert data["resume_hash"] == after["prev_hash"].hex()
    assert marker["seq"] > after["seq"]
    assert data["count"] == data["last_seq"] - data["first_seq"] + 1


@pytest.mark.parametrize("case", V["invalid_streams"], ids=lambda c: c["name"])
def test_the_verifier_refuses_each_invalid_stream_where_stated(case: dict[str, Any]) -> None:
    rows = [(decode_envelope(bytes.fromhex(h))["seq"], bytes.fromhex(h))
            for h in case["stored_hex"]]
    report = verify_events(rows, key_2())
    assert not report.ok
    assert (report.break_at, report.reason) == (case["verify"]["break_at"],
                                                case["verify"]["reason"])


@pytest.mark.parametrize("stream", V["epochs"], ids=lambda s: s["name"])
def test_the_receiver_stores_a_new_epoch_and_counts_its_hole(stream: dict[str, Any],
                                                             tmp_path: Path) -> None:
    store = ReceiverStore(tmp_path / "p.db")
    try:
        store.register(V["gateway_id"], V["token"], V["keys"]["key_2"]["public_key_hex"])
        raws = [bytes.fromhex(e["stored_hex"]) for e in stream["events"]]
        result = store.ingest(V["gateway_id"], stream["epoch"], raws,
                              store.keys(V["gateway_id"]))
        expected = stream["receiver"]
        assert result.error is None and result.high_water == expected["high_water"]
        assert [list(g) for g in result.gaps] == expected["missing"]
        figures = store.figures(V["gateway_id"])
        assert (figures["gaps"], figures["chain_breaks"]) == (expected["gaps"],
                                                              expected["chain_breaks"])
        assert figures["received"] == len(raws)
    finally:
        store.close()
