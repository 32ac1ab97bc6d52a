"""SasHost against the simulated EGM, in process, no trio (h11's ConnectionPair idea).

The ledger proves the durability contract: every raised exception recorded exactly once, in
order, and acknowledged by the machine only after it was durable.
"""

from __future__ import annotations

import itertools

import pytest

from drivers.sas.host import HostConfig, Report, SasHost
from drivers.sim.egm import SasEgm
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel

from .conftest import Pair


def _pair(*, rte: bool, seed: int = 1, rate: float = 2.0, rte_capable: bool = True,
          fifo_size: int = 20, addresses: tuple[int, ...] = (1,)) -> Pair:
    host = SasHost("sim0", list(addresses), HostConfig(rte=rte))
    egms = [SasEgm(a, Ledger(), play=PlayModel(seed + a, rate), serial=f"S{a}",
                   rte_capable=rte_capable, fifo_size=fifo_size) for a in addresses]
    return Pair(host, egms)


def _wire_view(pair: Pair, rte: bool) -> list[tuple[int, bytes]]:
    return [(e.code, e.data if rte else b"") for egm in pair.egms
            for e in egm.ledger.entries if not e.lost]


@pytest.mark.parametrize("rte", [True, False])
def test_every_exception_recorded_once_and_acked_after_durable(rte: bool) -> None:
    # Normal mode needs GP + LP 1A per exception at 200 ms each: keep below 2.5/s (no overflow).
    pair = _pair(rte=rte, rate=2.0 if rte else 1.0)
    pair.run_until(120.0)
    for egm in pair.egms:
        egm.play.stop()
    pair.run_until_quiet()
    recorded = [(e.source.code, e.source.payload) for e in pair.recorded]
    assert len(recorded) > 100
    assert recorded == _wire_view(pair, rte)
    assert pair.acked == pair.recorded
    assert all(e.acknowledged_at is not None for e in pair.egms[0].ledger.entries)
    stats = pair.host.statistics()[1]
    assert stats["online"] and stats["serial"] == "S1" and stats["rte"] is rte
    assert stats["timeouts"] == 0 and stats["retries"] == 0
    # deviceOnline, then a meterSnapshot per minute (never a CommandFinished: no commands).
    types = [e.event.type for e in pair.other if isinstance(e, Report)]
    assert types[0] == "deviceOnline" and types[1:] == ["meterSnapshot"] * (len(types) - 1) != []
    assert all(isinstance(e, Report) for e in pair.other)


def test_never_the_same_poll_twice_in_a_row() -> None:
    pair = _pair(rte=False)
    pair.run_until(30.0)
    assert all(a != b for a, b in zip(pair.frames, pair.frames[1:], strict=False))


def test_minimum_poll_interval_per_machine() -> None:
    pair = _pair(rte=True, rate=5.0)
    pair.run_until(20.0)
    sent = [t for t, wire in pair.sent_at if wire[0] & 0x7F == 1]
    assert len(sent) > 50
    slack = pair.host.config.timer_slack_s  # timers are ~1 ms coarse: at most this early
    assert min(b - a for a, b in itertools.pairwise(sent)) >= 0.2 - slack - 1e-9


def test_discovery_reads_denomination_and_serial_and_enables_rte() -> None:
    pair = _pair(rte=True, rate=0.0)
    pair.run_until(2.0)
    stats = pair.host.statistics()[1]
    assert stats["denomination_code"] == 0x01
    assert stats["serial"] == "S1" and stats["sas_version"] == "602"
    assert pair.egms[0].rte and stats["rte"]


def test_rte_events_carry_money_in_cents() -> None:
    pair = _pair(rte=True)
    pair.run_until(60.0)
    bets = [e for e in pair.recorded if e.type == "betPlaced"]
    wins = [e for e in pair.recorded if e.type == "gameEnded"]
    bills = [e for e in pair.recorded if e.type == "billAccepted"]
    assert bets and wins and bills
    assert all(e.data["wager_cents"] == e.data["wager_credits"] for e in bets)
    assert all(isinstance(e.data["amount_cents"], int) and e.data["amount_cents"] > 0
               for e in bills)
    assert all(e.machine.serial == "S1" for e in pair.recorded[3:])


def test_machine_without_rte_is_polled_in_normal_mode() -> None:
    pair = _pair(rte=True, rte_capable=False, rate=1.0)
    pair.run_until(60.0)
    pair.egms[0].play.stop()
    pair.run_until_quiet()
    assert [(e.source.code,) for e in pair.recorded] == [
        (e.code,) for e in pair.egms[0].ledger.entries]


def test_unsynced_machine_answers_only_after_sync_poll() -> None:
    egm = SasEgm(1, Ledger())
    assert egm.receive_words([0x181], 0.0) == b""
    assert egm.receive_words([0x182], 0.0) == b""  # GP to another address: now synced
    assert egm.receive_words([0x181], 0.0) == b"\x00"


def test_implied_nack_resends_and_ack_removes() -> None:
    egm = SasEgm(1, Ledger())
    egm.synced = True
    entry = egm.raise_exception(0x11, b"", 0.0)
    assert egm.receive_words([0x181], 0.0) == b"\x11"
    assert egm.receive_words([0x181], 0.1) == b"\x11"  # implied NACK: same data again
    assert egm.receive_words([0x101, 0x1A], 0.2)[:2] == b"\x01\x1a"  # different poll: ACK
    assert entry.acknowledged_at == 0.2
    assert egm.receive_words([0x181], 0.3) == b"\x00"


def test_bad_crc_is_nacked_without_state_change() -> None:
    egm = SasEgm(1, Ledger())
    egm.synced = True
    assert egm.receive_words([0x101, 0x01, 0x00, 0x00], 0.0) == b"\x81"
    assert egm.enabled
    assert egm.receive_words([0x101, 0x01, 0x51, 0x08], 0.0) == b"\x01"
    assert not egm.enabled


def test_overflow_loses_oldest_and_reports_70() -> None:
    pair = _pair(rte=True, rate=0.0)
    pair.run_until(2.0)
    egm = pair.egms[0]
    for n in range(25):
        egm.raise_exception(0x11 if n % 2 == 0 else 0x12, b"", pair.now)
    pair.run_until_quiet()
    summary = egm.ledger.summary()
    assert summary["lost_by_overflow"] == 5 and summary["pending"] == 0
    assert pair.recorded[0].type == "bufferOverflow"
    assert len(pair.recorded) == 21


def test_lost_answers_are_retried_and_recorded_once() -> None:
    pair = _pair(rte=False, rate=1.0)
    pair.run_until(10.0)
    pair.drop_to_host = 1
    pair.run_until(11.0)
    pair.egms[0].play.stop()
    pair.run_until_quiet()
    stats = pair.host.statistics()[1]
    assert stats["timeouts"] == 1 and stats["retries"] == 1
    assert [e.source.code for e in pair.recorded] == [
        e.code for e in pair.egms[0].ledger.entries]


def test_offline_after_misses_and_online_again() -> None:
    pair = _pair(rte=True, rate=0.0)
    pair.run_until(2.0)
    egm = pair.egms.pop()
    pair.run_until(10.0)
    assert [e.event.type for e in pair.other] == ["deviceOnline", "deviceOffline"]
    assert pair.host.statistics()[1]["timeouts"] >= 5
    egm.synced = False  # power-cycled: needs the sync poll again
    egm.rte = False
    pair.egms.append(egm)
    pair.run_until(20.0)
    assert [e.event.type for e in pair.other][-1] == "deviceOnline"
    assert egm.rte  # rediscovered and RTE re-enabled


def _cut_power_at_durable(pair: Pair, which: int) -> list[float]:
    """Power-cycle the machine while the gateway makes its `which`-th exception durable, i.e.
    after the machine answered it and before the implied ACK goes out."""
    host, egm = pair.host, pair.egms[0]
    durable, count, cuts = host.durable, itertools.count(1), []

    def cut_then_durable(token: int) -> None:
        if next(count) == which:
            egm.power_cycle(pair.now)
            cuts.append(pair.now)
        durable(token)

    host.durable = cut_then_durable  # type: ignore[method-assign]
    return cuts


@pytest.mark.parametrize("rte", [True, False])
def test_exception_resent_after_a_reset_that_cut_off_its_ack_is_recorded_once(rte: bool) -> None:
    """SAS 2.3: the machine deletes an exception only on the implied ACK; powered off before the
    ACK poll, it reports the same exception again after power-up. The host sees it came back
    (silence, a resync) before any answer confirmed the ACK: that first exception is the one it
    holds, acknowledged without a second record (host.py, "Machine resets")."""
    pair = _pair(rte=rte, rate=1.0)
    pair.check_durable = False  # the ACK the host sent for it was lost: the ledger's comes later
    cuts = _cut_power_at_durable(pair, which=20)
    pair.run_until(60.0)
    pair.egms[0].play.stop()
    pair.run_until_quiet()
    assert cuts
    recorded = [(e.source.code, e.source.payload) for e in pair.recorded]
    ledger = pair.egms[0].ledger.entries
    assert [code for code, _ in recorded] == [e.code for e in ledger]
    assert len(pair.resent) == 1 and pair.resent[0].source.code == pair.recorded[19].source.code
    assert pair.host.statistics()[1]["resent_after_reset"] == 1


@pytest.mark.parametrize("rte", [True, False])
def test_identical_exception_after_a_confirmed_ack_and_a_reset_is_recorded(rte: bool) -> None:
    """The other side of the same question: the machine heard the ACK (it answered the next
    poll) and then reset with an identical exception queued (a second main-door opening): that
    one is new and must be recorded."""
    pair = _pair(rte=rte, rate=0.0)
    pair.run_until(5.0)
    egm = pair.egms[0]
    egm.raise_exception(0x11, b"", pair.now)
    pair.run_until(10.0)
    assert [e.source.code for e in pair.recorded] == [0x11]
    egm.raise_exception(0x11, b"", pair.now)
    egm.power_cycle(pair.now)
    pair.run_until(30.0)
    pair.run_until_quiet()
    assert [e.source.code for e in pair.recorded] == [0x11, 0x11, 0x18, 0x17]
    assert not pair.resent
    assert all(e.acknowledged_at is not None for e in egm.ledger.entries)


def test_two_machines_on_one_line() -> None:
    pair = _pair(rte=True, addresses=(1, 2))
    pair.run_until(60.0)
    for egm in pair.egms:
        egm.play.stop()
    pair.run_until_quiet()
    for egm in pair.egms:
        mine = [(e.source.code, e.source.payload) for e in pair.recorded
                if e.machine.address == egm.address]
        assert mine == [(e.code, e.data) for e in egm.ledger.entries]


def test_commands_via_request() -> None:
    pair = _pair(rte=True, rate=0.0)
    pair.run_until(2.0)
    ticket = pair.host.request(1, 0x01)
    pair.run_until(4.0)
    assert not pair.egms[0].enabled
    assert any(getattr(e, "ticket", None) == ticket and e.ok for e in pair.other)


@pytest.mark.parametrize("rte", [True, False])
def test_restart_after_an_unrecorded_answer_gets_it_resent(rte: bool) -> None:
    """The gateway dies after the machine answered an exception but before it was durable. The
    new host's first poll must make the machine re-send it, not acknowledge it (see host.py,
    "Restart"): every exception the machine saw acknowledged is recorded exactly once."""
    egm = SasEgm(1, Ledger(), play=PlayModel(7, 2.0 if rte else 1.0), serial="S1")
    first = SasHost("p", [1], HostConfig(rte=rte))
    last_poll = b""
    durable_before: list[tuple[int, bytes]] = []
    lost = None
    now = 0.0
    while lost is None and now < 60:
        first.handle_timer(now)
        for frame in first.frames_to_send():
            last_poll = frame.data
            reply = egm.receive_words([frame.data[0] | 0x100, *frame.data[1:]], now)
            if reply:
                first.receive_data(reply, now + 0.003)
        while lost is None and (event := first.next_event()) is not None:
            if isinstance(event, Report) and event.token is not None:
                source = event.event.source
                if source is not None and len(durable_before) >= 5 and last_poll[0] & 0x80:
                    # The gateway dies here, before the commit. (An event that answered a long
                    # poll instead is the residual case the probe cannot cover: docs/sas.md.)
                    lost = (source.code, source.payload)
                    break
                if source is not None:
                    durable_before.append((source.code, source.payload))
                first.durable(event.token)
        now += 0.01
        egm.handle_timer(now)
    assert lost is not None

    pair = Pair(SasHost("p", [1], HostConfig(rte=rte)), [egm])
    pair.now, pair.check_durable = now + 0.5, False
    pair.run_until(now + 20)
    egm.play.stop()
    pair.run_until_quiet()
    after = [(e.source.code, e.source.payload) for e in pair.recorded if e.source is not None]
    assert after[0] == lost, last_poll.hex()  # re-sent by the machine, recorded by the new host
    acked = [e for e in egm.ledger.entries if e.acknowledged_at is not None]
    assert len(acked) == len(egm.ledger.entries)
    assert sorted(durable_before + after) == sorted((e.code, e.data if rte else b"") for e in acked)


def test_journal_survives_the_process_and_rejects_torn_slots(tmp_path) -> None:
    from drivers.sas.host import poll_from_wire
    from drivers.sas.journal import PollJournal

    journal = PollJournal(tmp_path / "p.journal")
    journal.record(bytes.fromhex("81"))
    journal.record(bytes.fromhex("011a"))       # a later frame to the same address wins
    journal.close()
    reopened = PollJournal(tmp_path / "p.journal")
    assert reopened.snapshot() == {1: bytes.fromhex("011a")}
    assert poll_from_wire(1, bytes.fromhex("011a")).command == 0x1A
    assert poll_from_wire(1, bytes.fromhex("010e0145d1")).data == b"\x01"
    assert poll_from_wire(1, bytes.fromhex("010e01ffff")) is None   # bad CRC: fall back to GP
    assert poll_from_wire(1, bytes.fromhex("02")) is None            # too short to be a poll


def test_priority_exception_does_not_settle_a_pending_redelivery(tmp_path) -> None:
    from drivers.base import MachineRef, SourceRef
    from drivers.redelivery import RedeliveryBook, Unacknowledged

    book = RedeliveryBook({"p/1": Unacknowledged(9, (0x7E, b"\x01"), None)})

    class Outbox:  # the outbox asks its machine ledger, which holds such a book
        redelivered_seq = staticmethod(book.check)
        epoch = "e1"

    from gateway.capture import OutboxSink
    sink = OutboxSink(Outbox(), currency="USD")  # type: ignore[arg-type]
    machine = MachineRef("p", 1)
    assert not sink.is_redelivery(machine, SourceRef("sas", 0x70, priority=True))
    assert sink.is_redelivery(machine, SourceRef("sas", 0x7E, b"\x01"))
    assert sink._last_seq["p/1"] == ("e1", 9)  # the ACK about to go out is marked against seq 9
