"""SasHost scripted by hand: (bytes, now) in -> (events, frames, timer) out. No trio, no EGM."""

from __future__ import annotations

import pytest

from drivers.sas import messages
from drivers.sas.errors import SasLocalProtocolError
from drivers.sas.host import Acknowledged, HostConfig, IdentityConfirmed, Report, SasHost

A = 1


def _frames(host: SasHost) -> list[str]:
    return [f.data.hex() for f in host.frames_to_send()]


def _events(host: SasHost) -> list[object]:
    """The host's events, less IdentityConfirmed (for the journal; tested on its own)."""
    out = []
    while (e := host.next_event()) is not None:
        if not isinstance(e, IdentityConfirmed):
            out.append(e)
    return out


def test_discovery_confirms_the_identity_once_and_compares_it_with_the_one_given_at_start(
        ) -> None:
    host = SasHost("p", [A], HostConfig(rte=False, credits_every_s=1000),
                   identities={A: ("OLD", None, None)})
    confirmed, replaced = [], []
    now = 0.0
    answers = {0x1F: messages.encode_game_config(A, messages.GameConfig()),
               0x54: messages.encode_version(A, messages.VersionInfo("602", "X1")),
               0xA0: messages.encode_answer(A, 0xA0, messages.EnabledFeatures(0, b"\0\0\0")),
               0x51: messages.encode_answer(A, 0x51, messages.GameCount(0)),
               0x74: messages.encode_answer(A, 0x74, messages.AftStatus(0))}
    while now < 5.0:
        host.handle_timer(now)
        for frame in host.frames_to_send():
            if frame.data[0] == A and len(frame.data) > 1 and frame.data[1] in answers:
                host.receive_data(answers[frame.data[1]], now + 0.003)
        while (e := host.next_event()) is not None:
            if isinstance(e, IdentityConfirmed):
                confirmed.append(e)
            elif isinstance(e, Report) and e.event.type == "machineReplaced":
                replaced.append(e.event)
        now += 0.01
    assert confirmed == [IdentityConfirmed(A, ("X1", None, "AT/SIM001"))]
    [event] = replaced
    assert event.data["changed"] == ["serial"] and event.data["previous_serial"] == "OLD"
    assert event.machine.serial == "X1"


def _online_host(*, rte: bool) -> SasHost:
    """A host past discovery: LP 1F, 54, A0, 51 (and LP 0E) answered; next poll at 2.0."""
    host = SasHost("p", [A], HostConfig(rte=rte, credits_every_s=1000))
    host.handle_timer(0.0)
    assert _frames(host) == ["81"]  # restart probe: a plain GP, no sync poll in front of it
    host.handle_timer(0.1)          # silence: the machine is not synchronised yet
    host.handle_timer(0.2)
    assert _frames(host) == ["82", "011f"]  # sync poll, then discovery
    host.receive_data(messages.encode_game_config(A, messages.GameConfig(denomination_code=2)), 0.21)
    host.handle_timer(0.4)
    assert _frames(host) == ["0154"]
    host.receive_data(messages.encode_version(A, messages.VersionInfo("602", "X1")), 0.41)
    host.handle_timer(0.61)
    assert _frames(host) == ["01a000006c13"]  # LP A0, game 0 (whole machine)
    host.receive_data(messages.encode_answer(A, 0xA0, messages.EnabledFeatures(0, b"\0\0\0")),
                      0.62)
    host.handle_timer(0.82)
    assert _frames(host) == ["0151"]
    host.receive_data(messages.encode_answer(A, 0x51, messages.GameCount(0)), 0.83)
    host.handle_timer(1.03)
    assert _frames(host) == ["0174ff0000001af9"]  # LP 74 interrogate: the asset number
    host.receive_data(messages.encode_answer(A, 0x74, messages.AftStatus(1234)), 1.035)
    if rte:
        host.handle_timer(1.25)
        assert _frames(host) == ["010e0145d1"]
        host.receive_data(b"\x01", 1.26)
        assert host.get_timer() == pytest.approx(1.27)  # lone ACK completes after the gap
        host.handle_timer(1.27)
    assert [e.event.type for e in _events(host)] == ["deviceOnline"]
    return host


def test_exception_is_acknowledged_only_after_durable() -> None:
    host = _online_host(rte=False)
    host.handle_timer(2.0)
    assert _frames(host) == ["81"]
    host.receive_data(b"\x11", 2.01)
    assert _events(host) == []  # a bare byte counts only once the line stayed quiet after it
    assert host.get_timer() == pytest.approx(2.02)
    host.handle_timer(2.02)
    [report] = _events(host)
    assert isinstance(report, Report) and report.event.type == "doorOpened"
    assert host.get_timer() is None  # holding the line
    host.handle_timer(5.0)
    assert _frames(host) == []
    host.durable(report.token)
    host.handle_timer(5.0)
    assert _frames(host) == ["011a"]  # the follow-up long poll is the implied ACK
    assert _events(host) == [Acknowledged(report.event, report.token)]


def test_no_activity_then_gp_again_goes_through_the_sync_address() -> None:
    host = _online_host(rte=False)
    host.handle_timer(2.0)
    assert _frames(host) == ["81"]
    host.receive_data(b"\x00", 2.01)
    host.handle_timer(2.2)
    assert _frames(host) == ["82", "81"]  # never the same poll twice in a row


def test_rte_event_instead_of_long_poll_answer() -> None:
    host = _online_host(rte=True)
    ticket = host.request(A, 0x01)
    host.handle_timer(2.0)
    assert _frames(host) == ["01015108"]
    host.receive_data(messages.encode_event(A, 0x7F, bytes.fromhex("00000010")), 2.01)
    [report] = _events(host)
    assert report.event.type == "gameEnded"
    assert dict(report.event.data) == {"win_credits": 10, "win_cents": 50}  # denomination 5c
    host.durable(report.token)
    host.handle_timer(2.2)
    # The event is ACKed by a poll to another address, then the long poll is re-issued.
    assert _frames(host) == ["82", "01015108"]
    host.receive_data(b"\x01", 2.21)
    host.handle_timer(2.3)
    events = _events(host)
    assert isinstance(events[0], Acknowledged)
    assert events[1].ticket == ticket and events[1].ok


def test_timeout_retries_identically_then_resyncs() -> None:
    """A silent GP may be a lost answer: the identical poll again until the silences in a row
    reach give_up_after_silences (9), then the sync GP."""
    host = _online_host(rte=False)
    host.handle_timer(2.0)
    assert _frames(host) == ["81"]
    host.handle_timer(2.1)  # timeout; the retry waits for the poll interval
    assert _frames(host) == []
    t = 2.0
    for _ in range(8):
        t += 0.2
        host.handle_timer(t + 0.001)
        assert _frames(host) == ["81"]
        host.handle_timer(t + 0.11)
    host.handle_timer(t + 0.21)
    assert _frames(host) == ["82", "81"]
    stats = host.statistics()[A]
    assert (stats["timeouts"], stats["retries"]) == (9, 8)
    # Only the first max_attempts (3) silences of a run are missed polls; the rest wait out a
    # doubt, and taking them for misses would mark a machine on a noisy line offline.
    assert stats["online"]


def test_nack_and_busy_on_a_long_poll() -> None:
    host = _online_host(rte=False)
    host.request(A, 0x02)
    host.handle_timer(2.0)
    assert _frames(host) == ["0102ca3a"]
    host.receive_data(b"\x81", 2.01)  # NACK: bad CRC at the machine
    host.handle_timer(2.2)
    assert _frames(host) == ["0102ca3a"]
    host.receive_data(b"\x01\x00", 2.21)  # busy: complete after the gap
    host.handle_timer(2.22)
    host.handle_timer(2.41)
    assert _frames(host) == ["0102ca3a"]  # the very same poll, no sync poll in between
    stats = host.statistics()[A]
    assert (stats["nacks"], stats["busy"]) == (1, 1)


def test_bad_configuration_is_a_local_error() -> None:
    with pytest.raises(SasLocalProtocolError):
        SasHost("p", [1, 1])
    with pytest.raises(SasLocalProtocolError):
        SasHost("p", [0])
    with pytest.raises(SasLocalProtocolError):
        SasHost("p", [1]).request(2, 0x01)


def test_late_bytes_while_a_retry_waits_leave_no_deadline_behind() -> None:
    # Found by the fuzz: bytes arriving between a timeout and the retry set a deadline earlier
    # than the retry time, which then never moved (the driver loop would spin).
    host = _online_host(rte=False)
    host.handle_timer(2.0)
    assert _frames(host) == ["81"]
    host.handle_timer(2.1)  # timeout; the retry waits until 2.2
    host.receive_data(b"\x01", 2.15)  # a late byte, could still be the start of an event frame
    now = 2.15 + host.config.inter_byte_gap_s
    host.handle_timer(now)
    # The attempt drew no byte before it timed out: a lone late byte is a slow answer.
    [report] = _events(host)  # the late byte was the answer: exception 01
    assert report.event.source.code == 0x01
    assert host.get_timer() is None  # holding the line until durable
    host.durable(report.token)
    host.handle_timer(now)
    timer = host.get_timer()
    assert timer is not None and timer > now


def test_bare_exception_byte_in_rte_mode_means_the_machine_left_rte() -> None:
    host = _online_host(rte=True)
    host.handle_timer(2.0)
    assert _frames(host) == ["81"]
    host.receive_data(b"\x11", 2.01)
    assert _events(host) == []  # one bare byte: wait for the line to go quiet
    host.handle_timer(2.01 + host.config.inter_byte_gap_s)
    host.handle_timer(2.1)
    [report] = _events(host)
    assert report.event.type == "doorOpened"
    assert host.statistics()[A]["rte"] is False
    host.durable(report.token)
    host.handle_timer(2.2)
    assert _frames(host)[-1] == "010e0145d1"  # RTE asked for again (and the ACK of the 11)


def test_a_late_lone_byte_after_a_garbled_attempt_is_not_an_answer() -> None:
    """An attempt that drew bytes and failed may have been an answer split by a gap: a lone
    byte arriving after it is its tail, not an answer; the identical poll goes out as planned."""
    host = _online_host(rte=True)
    host.handle_timer(2.0)
    assert _frames(host) == ["81"]
    host.receive_data(bytes.fromhex("01ff7f00"), 2.01)  # an event frame cut short by a gap
    host.handle_timer(2.02)   # quiet: no answer, the attempt failed with bytes
    host.receive_data(b"\x20", 2.05)  # a lone byte, then quiet again
    host.handle_timer(2.06)
    assert _events(host) == []
    host.handle_timer(2.2)
    assert _frames(host) == ["81"]


def test_bytes_after_link_down_reopen_no_poll_of_the_old_link() -> None:
    """A poll given up on a silence stays open for its late answer until the next frame
    ("Late answers"); a link that went down ends that: bytes on the new link before its first
    poll answer nothing the host sent."""
    host = SasHost("p", [A], HostConfig(rte=False))
    host.handle_timer(0.0)
    assert _frames(host) == ["81"]  # restart probe
    host.handle_timer(0.15)         # silent: given up, open for a late answer until 0.2
    assert _frames(host) == []
    host.link_down(0.16, "device gone")
    _events(host)
    host.receive_data(b"\x11", 0.17)
    assert host._inflight is None and _events(host) == []
