"""Shared fixtures. Rules for tests here: no real sleeps to wait for something (wait on the event,
or use the autojump clock); every test with real I/O runs under trio.fail_after."""

from __future__ import annotations

from pathlib import Path

import nacl.signing
import pytest

from gateway.outbox import Outbox, OutboxSettings
from gateway.signing import Signer


@pytest.fixture
def signer() -> Signer:
    return Signer(nacl.signing.SigningKey.generate())


@pytest.fixture
def outbox_settings(tmp_path: Path) -> OutboxSettings:
    return OutboxSettings(path=tmp_path / "outbox.db", gateway_id="test-gw", venue="Test Venue",
                          region="test")


@pytest.fixture
def make_outbox(outbox_settings: OutboxSettings, signer: Signer):
    opened: list[Outbox] = []

    def make(settings: OutboxSettings | None = None) -> Outbox:
        outbox = Outbox.open(settings or outbox_settings, signer)
        opened.append(outbox)
        return outbox

    yield make
    for outbox in opened:
        outbox.close()


@pytest.fixture(autouse=True)
def validate_every_committed_event(monkeypatch):
    """Every event any outbox commits during a test is checked against its shipped JSON Schema
    (issue 4: 'every event the gateway emits in tests is validated against its schema')."""
    from gateway.catalogue import validate_envelope

    original = Outbox.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.commit_listeners.append(lambda envelopes: [validate_envelope(e) for e in envelopes])

    monkeypatch.setattr(Outbox, "__init__", init)
