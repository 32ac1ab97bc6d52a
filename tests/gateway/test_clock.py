"""The clock flag in gatewayStarted and uplinkUp (docs/uplink-protocol.md section 11)."""

from __future__ import annotations

import ctypes

import pytest

from gateway import clock
from gateway.catalogue import load_schema


class FakeLibc:
    def __init__(self, state: int) -> None:
        self.state = state

    def adjtimex(self, buffer: object) -> int:
        return self.state


@pytest.mark.parametrize(("state", "expected"), [(0, True), (1, True), (4, True),
                                                 (clock.TIME_ERROR, False), (-1, None)])
def test_the_kernel_clock_state_decides(monkeypatch: pytest.MonkeyPatch, state: int,
                                        expected: bool | None) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: FakeLibc(state))
    assert clock.clock_synchronised() is expected


def test_unknown_where_adjtimex_cannot_be_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(*args: object, **kwargs: object) -> object:
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert clock.clock_synchronised() is None


def test_this_machine_answers_and_the_schemas_carry_the_flag() -> None:
    assert clock.clock_synchronised() in (True, False, None)
    for event in ("gatewayStarted", "uplinkUp"):
        data = load_schema(event)["properties"]["data"]["properties"]
        assert data["clock_synchronised"] == {"type": "boolean"}
