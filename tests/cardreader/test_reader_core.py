"""The reader core's decisions: reads, bounces, insert sessions, bad reads, a lost reader; and
that no event, figure or reason ever carries the card number."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.cardreader.cardid import VenueSecret
from drivers.cardreader.reader import CardReaderCore, PlayerEvent, ReaderSettings
from drivers.sim.cardreader import SimCard, SimReader, rfid_line, swipe_bytes

SECRET = VenueSecret(bytes(range(32)))
ANNA = SimCard("6012345678901234", "PLAYER/ANNA", "04A1B2C3D4E5F6")
BEN = SimCard("6098765432109876", "PLAYER/BEN", "04FFEEDDCCBBAA")


def _core(kind: str = "swipe", **kw: float | bool) -> CardReaderCore:
    core = CardReaderCore(ReaderSettings(kind=kind, **kw), SECRET)
    core.link_up(0.0)
    assert [e.type for e in _events(core)] == ["cardReaderOnline"]  # at start: it is there
    return core


def _events(core: CardReaderCore) -> list[PlayerEvent]:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def _run_timers(core: CardReaderCore, until: float) -> None:
    while (due := core.get_timer()) is not None and due <= until:
        core.handle_timer(due)


def test_a_swipe_is_one_card_read_with_the_keyed_hash() -> None:
    core = _core()
    core.receive(swipe_bytes(ANNA), 1.0)
    [event] = _events(core)
    assert event.type == "cardRead"
    assert event.data == {"card_id": SECRET.card_id("magstripe", ANNA.number),
                          "key_id": SECRET.key_id, "medium": "magstripe"}


def test_either_track_alone_reads_the_same_card() -> None:
    ids = set()
    for t1, t2 in ((True, False), (False, True), (True, True)):
        core = _core()
        core.receive(swipe_bytes(ANNA, track1=t1, track2=t2), 0.0)
        ids |= {e.data["card_id"] for e in _events(core)}
    assert len(ids) == 1


def test_a_bounce_within_debounce_is_counted_not_sent() -> None:
    core = _core(debounce_s=2.0)
    core.receive(swipe_bytes(ANNA), 1.0)
    core.receive(swipe_bytes(ANNA), 1.1)
    core.receive(swipe_bytes(BEN), 1.2)
    core.receive(swipe_bytes(ANNA), 5.0)
    assert [e.data["card_id"][:6] for e in _events(core)] == [
        SECRET.card_id("magstripe", c.number)[:6] for c in (ANNA, BEN, ANNA)]
    assert core.statistics()["bounces"] == 1


def test_a_swipe_without_a_line_end_completes_after_the_gap() -> None:
    core = _core(swipe_gap_s=0.25)
    core.receive(swipe_bytes(ANNA)[:-2], 1.0)
    assert _events(core) == [] and core.get_timer() == pytest.approx(1.25)
    _run_timers(core, 2.0)
    assert [e.type for e in _events(core)] == ["cardRead"]


@pytest.mark.parametrize(("wire", "reason"), [
    (b"%E?;E?\r\n", "the reader reported a read error"),
    (b";6012\x7f45678901234=2812?\r\n", "track 2: character 0x7f outside the track 2 alphabet"),
    (f"%B{ANNA.number}^X^28?;{BEN.number}=28?\r\n".encode(),
     "tracks 1 and 2 carry different card numbers"),
    (b";=2812?\r\n", "no card number on the stripe"),
])
def test_bad_reads_say_why(wire: bytes, reason: str) -> None:
    core = _core()
    core.receive(wire, 0.0)
    [event] = _events(core)
    assert event.type == "cardBadRead" and event.data == {"medium": "magstripe",
                                                          "reason": reason}


def test_a_garbage_spewing_reader_is_held_to_one_bad_read_a_second() -> None:
    core = _core(bad_read_hold_s=1.0)
    for n in range(10):
        core.receive(b"%E?\r\n", n * 0.1)
    core.receive(b"%E?\r\n", 1.5)
    events = _events(core)
    assert [e.type for e in events] == ["cardBadRead", "cardBadRead"]
    assert events[1].data["held_back"] == 9


def test_insert_session_and_its_bounce() -> None:
    core = _core("insert", debounce_s=2.0)
    core.receive(b"IN\r\n" + swipe_bytes(ANNA), 10.0)
    core.receive(b"OUT\r\n", 10.1)                      # badly seated: out ...
    core.receive(b"IN\r\n" + swipe_bytes(ANNA), 10.3)   # ... and back in: one visit
    _run_timers(core, 20.0)
    assert core.statistics()["card_present"]
    core.receive(b"OUT\r\n", 40.0)
    _run_timers(core, 50.0)
    inserted, removed = _events(core)
    card = SECRET.card_id("magstripe", ANNA.number)
    assert (inserted.type, inserted.data["card_id"]) == ("cardInserted", card)
    assert removed.type == "cardRemoved" and removed.data["card_id"] == card
    assert removed.data["inserted_for_s"] == 32.0 and removed.data["reason"] == "removed"
    assert removed.at == 42.0  # held debounce_s in case it came back
    assert core.statistics()["bounces"] == 1 and not core.statistics()["card_present"]


def test_a_new_card_without_out_replaces_the_seated_one() -> None:
    core = _core("insert")
    core.receive(b"IN\r\n" + swipe_bytes(ANNA), 0.0)
    core.receive(b"IN\r\n" + swipe_bytes(BEN), 5.0)
    events = _events(core)
    assert [(e.type, e.data.get("reason")) for e in events] == [
        ("cardInserted", None), ("cardRemoved", "replaced"), ("cardInserted", None)]


def test_a_lost_reader_ends_the_visit() -> None:
    core = _core("insert")
    core.receive(b"IN\r\n" + swipe_bytes(ANNA) + b"%B60", 0.0)
    core.link_down(3.0, "read failed: EIO")
    [_inserted, removed, offline] = _events(core)
    assert removed.data["reason"] == "reader_offline" and offline.type == "cardReaderOffline"
    assert core.statistics()["online"] is False and core.get_timer() is None


def test_a_reader_going_away_and_back_is_said_once_each_way() -> None:
    """Floor staff need to know a reader is gone (players cannot be rated): offline once however
    often the reopening fails, online when it is back; the reason names the line, not a card."""
    core = CardReaderCore(ReaderSettings(kind="insert"), SECRET)
    core.link_down(0.0, "cannot open /dev/ttyUSB7: No such file or directory")  # never opened
    core.link_down(5.0, "cannot open /dev/ttyUSB7: No such file or directory")  # retried
    core.link_up(9.0)
    core.link_up(9.5)  # (a second open without a loss in between says nothing)
    core.receive(b"IN\r\n" + swipe_bytes(ANNA), 10.0)
    core.link_down(12.0, "read failed: EIO")
    assert [(e.type, e.data.get("reason"), e.at) for e in _events(core)] == [
        ("cardReaderOffline", "cannot open /dev/ttyUSB7: No such file or directory", 0.0),
        ("cardReaderOnline", None, 9.0), ("cardInserted", None, 10.0),
        ("cardRemoved", "reader_offline", 12.0), ("cardReaderOffline", "read failed: EIO", 12.0)]
    assert core.statistics()["offline_reason"] == "read failed: EIO"


def test_rfid_reads_and_a_held_card() -> None:
    core = _core("rfid", debounce_s=1.0)
    for n in range(5):
        core.receive(rfid_line(ANNA), 0.5 * n)   # held at the reader: repeats refresh the window
    core.receive(rfid_line(ANNA), 5.0)
    core.receive(b"\x02" + BEN.uid.lower().encode() + b"\x03", 5.1)
    events = _events(core)
    assert [e.data["card_id"] for e in events] == [
        SECRET.card_id("rfid", u) for u in (ANNA.uid, ANNA.uid, BEN.uid)]
    assert {e.data["medium"] for e in events} == {"rfid"}


def test_another_secret_gives_other_ids_and_key_id() -> None:
    other = VenueSecret(bytes(range(1, 33)))
    assert other.card_id("magstripe", ANNA.number) != SECRET.card_id("magstripe", ANNA.number)
    assert other.key_id != SECRET.key_id
    assert SECRET.card_id("rfid", "12345678") != SECRET.card_id("magstripe", "12345678")
    assert "key" not in repr(SECRET).replace("key=", "")  # repr hides the key


def _no_clear_number(core: CardReaderCore, cards: list[SimCard]) -> list[PlayerEvent]:
    events = _events(core)
    text = json.dumps([e.data for e in events]) + json.dumps(core.statistics())
    for card in cards:
        assert card.number not in text and card.uid not in text and card.name not in text
        assert card.number[-8:] not in text
    return events


@pytest.mark.parametrize("kind", ["swipe", "insert", "rfid"])
def test_simulated_readers_with_every_fault_never_leak_a_number(kind: str) -> None:
    sim = SimReader(kind, seed=7, rate=2.0, faults=frozenset({"misread", "bounce", "garbage"}),
                    probability=0.2)
    core = _core(kind)
    now = 0.0
    while now < 300:
        now = min(sim.next_due(), core.get_timer() or float("inf"))
        data = sim.take(now)
        if data:
            core.receive(data, now)
        _run_timers(core, now)
    events = _no_clear_number(core, sim.pool)
    good = {"swipe": "cardRead", "insert": "cardInserted", "rfid": "cardRead"}[kind]
    assert sum(e.type == good for e in events) > 100
    if kind != "rfid":
        assert any(e.type == "cardBadRead" for e in events)
    assert core.statistics()["bounces"] > 0 and core.statistics()["noise_bytes"] > 0


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["swipe", "insert", "rfid"]),
       chunks=st.lists(st.tuples(st.binary(max_size=60), st.floats(0, 5)), max_size=20))
def test_fuzz_core_only_player_events(kind: str, chunks: list[tuple[bytes, float]]) -> None:
    core = _core(kind)
    now = 0.0
    for data, gap in chunks:
        now += gap
        _run_timers(core, now)
        core.receive(data, now)
    core.link_down(now + 1, "gone")
    *played, last = _events(core)
    for event in played:
        assert event.type in {"cardRead", "cardInserted", "cardRemoved", "cardBadRead"}
    assert (last.type, dict(last.data)) == ("cardReaderOffline", {"reason": "gone"})


@pytest.mark.parametrize(("kind", "wire"), [
    ("swipe", swipe_bytes(ANNA, lrc=True)),
    ("insert", b"IN\r\n" + swipe_bytes(ANNA, lrc=True) + b"OUT\r\n"),
    ("rfid", b"\x02" + ANNA.uid.encode() + b"\x03"),
])
def test_the_core_decides_the_same_however_the_bytes_are_cut(kind: str, wire: bytes) -> None:
    def run(pieces: list[bytes]) -> list[tuple[str, dict]]:
        core = _core(kind, lrc=True, debounce_s=0.0)
        for piece in pieces:
            core.receive(piece, 0.0)  # pieces within the swipe gap of each other
        _run_timers(core, 10.0)
        return [(e.type, dict(e.data)) for e in _events(core)]

    whole = run([wire])
    assert whole and whole == run([wire[i:i + 1] for i in range(len(wire))])
    for cut in range(len(wire) + 1):
        assert run([wire[:cut], wire[cut:]]) == whole, cut
        assert run([b"\x00\xffgarbage\r\n" + wire[:cut], wire[cut:]]) == whole, cut
