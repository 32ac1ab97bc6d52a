from __future__ import annotations

import json

import jsonschema
import pytest

from gateway.catalogue import DOCS, SCHEMA_DIR, envelope_schema, events_markdown, validate_envelope
from gateway.events import CATALOGUE, CHANNELS, system_draft


def test_shipped_schemas_match_the_catalogue():
    shipped = {p.stem for p in SCHEMA_DIR.glob("*.json")}
    assert shipped == set(CATALOGUE)
    for spec in CATALOGUE.values():
        assert json.loads((SCHEMA_DIR / f"{spec.type}.json").read_text()) == envelope_schema(spec), \
            f"{spec.type}: run python -m gateway.catalogue --write"


def test_events_doc_matches_the_catalogue():
    assert DOCS.read_text() == events_markdown(), "run python -m gateway.catalogue --write"


def test_every_type_has_a_known_channel():
    assert {spec.channel for spec in CATALOGUE.values()} <= set(CHANNELS)


def envelope(event_type: str, data: dict) -> dict:
    d = system_draft(event_type, data, now=1_700_000_000.123)
    return {"event": d.type, "channel": d.channel, "schema_version": d.schema_version,
            "id": "gw:00112233aabbccdd:1", "seq": 1, "epoch": "00112233aabbccdd",
            "gateway_id": "gw", "venue": "", "region": "", "machine": None,
            "timestamp": d.timestamp, "trace_id": d.trace_id, "data": d.data,
            "prev_hash": bytes(32), "hash": bytes(32), "sig": bytes(64),
            "kid": "ed25519:0011223344556677"}


def test_valid_event_passes_and_money_must_be_exact():
    validate_envelope(envelope("billAccepted", {"amount_cents": 2000}))
    bad = envelope("billAccepted", {})
    bad["data"] = {"amount": {"minor": 20.5, "currency": "USD"}}
    with pytest.raises(jsonschema.ValidationError):
        validate_envelope(bad)


def test_unknown_data_field_is_caught():
    with pytest.raises(jsonschema.ValidationError):
        validate_envelope(envelope("doorOpened", {"door": "main", "colour": "red"}))
