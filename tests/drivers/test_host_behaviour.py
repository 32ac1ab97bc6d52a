"""Host behaviour beyond the GP loop (issue 3): discovery (LP 54, 1F, A0, 51/56, again on 3C),
periodic meter/clock reads that never starve the GP, exception follow-ups (70, 51, bills),
the minimum poll interval and chirps. SasHost paired with the simulated EGM, virtual time."""

from __future__ import annotations

import itertools

import pytest

from drivers.sas.codes import Exc
from drivers.sas.errors import SasLocalProtocolError
from drivers.sas.host import HostConfig, LinkNote, Report, SasHost
from drivers.sim.egm import SasEgm
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel
from tests.drivers.conftest import Pair

PERIODIC = {0x6F, 0xAF, 0x1C, 0x0F, 0x7E, 0x1A}


def _pair(*, rte: bool = True, rate: float = 0.0, play_seed: int = 3, **config: object) -> Pair:
    unsupported = frozenset(config.pop("_unsupported", ()))  # type: ignore[arg-type]
    cfg = HostConfig(rte=rte, **config)  # type: ignore[arg-type]
    egm = SasEgm(1, Ledger(), play=PlayModel(play_seed, rate) if rate else PlayModel(0, 0.0),
                 serial="B1", unsupported=unsupported)
    return Pair(SasHost("b", [1], cfg), [egm])


def _commands(pair: Pair) -> list[int | None]:
    """Commands of the polls to address 1 in order (None = GP); sync GPs left out."""
    return [None if f[0] & 0x80 else f[1] for f in pair.frames if (f[0] & 0x7F) == 1]


def _snapshots(pair: Pair) -> list[dict[str, object]]:
    return [dict(e.event.data) for e in pair.other
            if isinstance(e, Report) and e.event.type == "meterSnapshot"]


def test_discovery_reads_features_and_games_and_again_on_3c() -> None:
    pair = _pair()
    pair.run_until(3.0)
    assert _commands(pair)[:6] == [None, 0x1F, 0x54, 0xA0, 0x51, 0x56]  # probe GP, discovery
    stats = pair.host.statistics()[1]
    assert (stats["features"], stats["game_count"], stats["games"]) == ("000000", 1, [1])
    start = len(pair.frames)
    pair.egms[0].raise_exception(Exc.OPERATOR_CHANGED_OPTIONS, b"", pair.now)
    pair.run_until(pair.now + 3.0)
    after = [f[1] for f in pair.frames[start:] if len(f) > 1 and f[0] == 1]
    assert after[:5] == [0x1F, 0x54, 0xA0, 0x51, 0x56]  # re-read, not LP 0E again
    assert [e.source.code for e in pair.recorded] == [0x3C]
    assert pair.acked == pair.recorded


@pytest.mark.parametrize("rte", [True, False])
def test_periodic_meters_and_clock_never_starve_the_gp(rte: bool) -> None:
    pair = _pair(rte=rte, rate=1.0, meters_every_s=2.0, clock_every_s=3.0, credits_every_s=1.0)
    pair.run_until(60.0)
    commands = _commands(pair)
    periodic = [c for c in commands if c in PERIODIC]
    assert {0x6F, 0xAF, 0x7E, 0x1A} <= set(periodic)
    six = [c for c in periodic if c in (0x6F, 0xAF)]
    reads = [c for i, c in enumerate(six) if i == 0 or six[i - 1] != c]  # retries collapsed
    assert len(reads) > 5 and reads[:4] == [0x6F, 0xAF, 0x6F, 0xAF]
    # Never two different periodic polls back to back: a GP gets at least every other slot.
    # (The same one twice is a long poll re-issued after an RTE event answered it.)
    assert not [(a, b) for a, b in itertools.pairwise(commands)
                if a in PERIODIC and b in PERIODIC and a != b]
    assert commands.count(None) >= len(periodic)
    snaps = _snapshots(pair)
    assert len(snaps) >= 10
    for data in snaps:
        assert set(data) == {"meters", "denomination_cents", "digits", "straddle"}
        assert all(isinstance(v, int) for v in data["meters"].values())  # type: ignore[union-attr]
    assert snaps[-1]["meters"]["games_played"] > 0  # type: ignore[index]
    assert pair.host.statistics()[1]["machine_clock"].startswith("2026-01-01T00:00:")
    # Exceptions still flow: every one raised is recorded once and acknowledged after durable.
    pair.egms[0].play.stop()
    pair.run_until_quiet()
    raised = [(e.code, e.data if rte else b"") for e in pair.egms[0].ledger.entries if not e.lost]
    assert [(e.source.code, e.source.payload) for e in pair.recorded] == raised


def test_legacy_meter_polls_and_fallback_when_6f_is_ignored() -> None:
    legacy = _pair(meter_polls="1C", meters_every_s=2.0)
    legacy.run_until(10.0)
    assert {0x1C, 0x0F} <= set(_commands(legacy)) and 0x6F not in _commands(legacy)
    assert "cancelled_credits" in _snapshots(legacy)[0]["meters"]  # type: ignore[operator]
    pair = _pair(meters_every_s=2.0, _unsupported={0x6F, 0xAF})
    pair.run_until(20.0)
    commands = _commands(pair)
    assert 0x6F in commands and 0x1C in commands
    assert pair.host.statistics()[1]["meter_polls"] == "1C"
    assert _snapshots(pair) and pair.host.statistics()[1]["meters"] is not None


def test_request_meters_finishes_with_the_meters() -> None:
    pair = _pair()
    pair.run_until(2.0)
    ticket = pair.host.request_meters(1)
    pair.run_until(4.0)  # three LP 6F polls, each after a GP
    [done] = [e for e in pair.other if getattr(e, "ticket", None) == ticket]
    assert done.ok and set(done.data["meters"]) >= {"coin_in", "coin_out", "games_played"}


@pytest.mark.parametrize("rte", [True, False])
def test_overflow_70_is_followed_by_a_full_meter_read(rte: bool) -> None:
    pair = _pair(rte=rte)
    egm = pair.egms[0]
    pair.run_until(2.0)
    for _ in range(egm.fifo_size + 3):
        egm.raise_exception(Exc.GENERAL_TILT, b"", pair.now)
    pair.run_until_quiet()
    pair.run_until(pair.now + 2.0)  # the read's last poll, and (normal mode) "no activity"
    codes = [e.source.code for e in pair.recorded]
    assert codes.count(0x70) == 1
    i = pair.frames.index(next(f for f in pair.frames if len(f) > 1 and f[1] in (0x6F, 0xAF)))
    assert i > 0 and _snapshots(pair)
    assert pair.acked == pair.recorded


@pytest.mark.parametrize("rte", [True, False])
def test_handpay_51_reads_lp_1b_after_durable_and_stays_one_event(rte: bool) -> None:
    pair = _pair(rte=rte)
    egm = pair.egms[0]
    pair.run_until(2.0)
    assert egm.play is not None
    egm.play.handpay_cents = 123_400
    egm.raise_exception(Exc.HANDPAY_PENDING, b"", pair.now)
    pair.run_until(pair.now + 2.0)
    assert [e.type for e in pair.recorded] == ["handpayPending"]  # one exception, one event
    assert pair.acked == pair.recorded
    assert 0x1B in _commands(pair)
    handpay = pair.host.statistics()[1]["last_handpay"]
    assert handpay["amount_cents"] == 123_400 and handpay["level"] == 0x40


def test_bills_read_lp_48_in_normal_mode_only() -> None:
    normal = _pair(rte=False, rate=3.0, play_seed=11)
    normal.run_until(30.0)
    bills = [e for e in normal.recorded if e.type == "billAccepted"]
    assert bills and 0x48 in _commands(normal)
    assert normal.host.statistics()[1]["last_bill"]["count"] >= 1
    rte = _pair(rte=True, rate=3.0, play_seed=11)
    rte.run_until(30.0)
    assert [e for e in rte.recorded if e.type == "billAccepted"]
    assert 0x48 not in _commands(rte)  # RTE 4F carries the details itself


def test_minimum_poll_interval_floor_and_ceiling() -> None:
    pair = _pair(rate=5.0, poll_interval_s=0.01)  # asks for 10 ms: the floor is 40 ms
    pair.run_until(10.0)
    times = [t for t, f in pair.sent_at if (f[0] & 0x7F) == 1]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.04 - pair.host.config.timer_slack_s - 1e-9
    assert pair.host.statistics()[1]["poll_interval_s"] == 0.04
    fast = _pair(poll_interval_s=0.04)
    assert fast.host.config.interval_s == 0.04
    with pytest.raises(SasLocalProtocolError):
        HostConfig(poll_interval_s=6.0)
    with pytest.raises(SasLocalProtocolError):
        HostConfig(meter_polls="2F")


def test_chirp_counted_and_noted_only_between_polls() -> None:
    host = SasHost("c", [1], HostConfig())
    host.receive_words([0x101], 0.0)  # nothing outstanding: a chirp
    assert isinstance(host.next_event(), LinkNote)
    assert host.statistics()[1]["chirps"] == 1
    host.handle_timer(0.0)  # probe GP goes out
    host.frames_to_send()
    host.receive_words([0x101], 0.01)  # during a poll: never data, counted as garbage
    assert host.statistics()[1]["chirps"] == 1
    assert host.statistics()[1]["garbage_bytes"] == 1
    host.receive_words([0x105], 0.02)  # not one of our addresses: garbage too
    assert host.statistics()[1]["chirps"] == 1


def test_simulator_chirps_after_5_s_without_an_address_byte() -> None:
    egm = SasEgm(1, Ledger())
    assert egm.get_timer() == 5.0
    egm.handle_timer(5.0)
    egm.handle_timer(5.2)
    assert egm.take_words() == [0x101, 0x101] and egm.chirps_sent == 2
    egm.receive_words([0x181], 5.3)  # polled: quiet again for 5 s
    assert egm.get_timer() == pytest.approx(10.3)



@pytest.mark.parametrize("retries", [0, 1, 2])
@pytest.mark.parametrize("machines", [1, 3])
def test_a_silent_rte_machine_reports_its_snapshots_whatever_rte_silence_retries(
        machines: int, retries: int) -> None:
    """An idle RTE machine never sends an event, so only silent GPs can show its queue empty.
    With `rte_silence_retries` 0 (docs/sas.md, for busy multi-drop lines) each poll is one
    silence: the two silences in a row that release a read are counted across polls, per
    machine, and any answer in between starts the count again (a first silence may be a lost
    event answer: the poll after it re-sends, or acknowledges, that event)."""
    cfg = HostConfig(rte=True, rte_silence_retries=retries, meters_every_s=40.0)
    egms = [SasEgm(a, Ledger(), play=PlayModel(0, 0.0), serial=f"S{a}")
            for a in range(1, machines + 1)]
    pair = Pair(SasHost("s", [e.address for e in egms], cfg), egms)
    pair.run_until(400.0)
    for egm in egms:
        a = egm.address
        released = [e.event.monotonic for e in pair.other if isinstance(e, Report)
                    and e.event.type == "meterSnapshot" and e.event.machine.address == a]
        assert len(released) >= 8, (a, released)
        for t in released:
            # The polls to this machine before the release: the last two are GPs (silent: the
            # machine answers every long poll with data), sent after the read's last meter poll.
            polls = [w for at, w in pair.sent_at if at <= t and w[0] & 0x7F == a]
            assert all(w[0] & 0x80 for w in polls[-2:]), (a, t, [w.hex() for w in polls[-4:]])
