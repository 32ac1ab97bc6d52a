"""The poll journal: last frame per address and a line-wide frame counter that survive the
process, written so that a kill at any point leaves the old or the new record, never a mix."""

from __future__ import annotations

import pytest
import trio

from drivers.sas.driver import SasSettings
from drivers.sas.host import HostConfig, SasHost
from drivers.sas.journal import _HALVES, SIZE, SLOT, PollJournal
from drivers.sim.egm import SasEgm
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel

from .conftest import RecordingSink, play_through_driver


def test_counter_orders_every_frame_on_the_line_and_survives_reopening(tmp_path) -> None:
    journal = PollJournal(tmp_path / "p.journal")
    assert (journal.counter, journal.last_address()) == (0, None)
    assert journal.record(bytes.fromhex("81")) == 1
    assert journal.record(bytes.fromhex("02")) == 2
    assert journal.record(bytes.fromhex("011a")) == 3
    assert journal.record(b"\x05" + bytes(40)) == 4   # too long to keep: counted all the same
    assert journal.record(bytes.fromhex("80")) == 5   # a broadcast counts too
    journal.close()

    reopened = PollJournal(tmp_path / "p.journal")
    assert reopened.counter == reopened.counter_at_open == 5
    assert reopened.entries()[1] == (3, bytes.fromhex("011a"))
    assert reopened.entries()[5] == (4, b"")
    assert reopened.snapshot() == {1: bytes.fromhex("011a"), 2: bytes.fromhex("02")}
    assert reopened.last_address() == 0
    assert reopened.record(bytes.fromhex("02")) == 6
    assert reopened.last_address() == 2 and reopened.counter_at_open == 5


def test_a_record_cut_short_leaves_the_previous_one(tmp_path) -> None:
    """Everything of a record but the one-byte selector flip is written (a kill right before
    it): the journal still reads the previous (counter, frame) of that address."""
    path = tmp_path / "p.journal"
    journal = PollJournal(path)
    journal.record(bytes.fromhex("01"))
    journal.record(bytes.fromhex("011a"))
    selector = journal._map[1 * SLOT]
    other = 2 if selector == 1 else 1
    half = 1 * SLOT + _HALVES[other - 1]
    journal._map[half:half + 8] = (99).to_bytes(8, "little")
    journal._map[half + 8] = 2
    journal._map[half + 9:half + 11] = bytes.fromhex("011c")
    journal.close()
    again = PollJournal(path)
    assert again.entries()[1] == (2, bytes.fromhex("011a"))
    assert again.counter == 2


def test_a_journal_of_another_layout_is_started_afresh(tmp_path) -> None:
    path = tmp_path / "p.journal"
    path.write_bytes(b"\x02\x01\x1a" + bytes(4093))   # the 4 KiB layout of earlier releases
    journal = PollJournal(path)
    assert journal.entries() == {} and journal.counter == 0
    assert path.stat().st_size == SIZE


def test_the_machine_that_got_the_line_s_last_frame_is_probed_first() -> None:
    """Any poll before its probe would be the implied ACK of its unrecorded answer."""
    host = SasHost("p", [1, 2, 3], HostConfig(rte=True),
                   last_polls={1: bytes.fromhex("81"), 2: bytes.fromhex("82"),
                               3: bytes.fromhex("83")}, first_probe=2)
    host.handle_timer(0.0)
    assert [f.data for f in host.frames_to_send()] == [bytes.fromhex("82")]


@pytest.mark.parametrize("rte", [True, False])
async def test_each_exception_carries_the_counter_of_the_poll_it_answered(
        tmp_path, autojump_clock: trio.abc.Clock, rte: bool) -> None:
    """At the moment an exception is recorded, the last frame on the line is the poll it answered
    (to its machine), and its `poll_counter` is that frame's counter; after it the ACK moves the
    counter on, which is how a restart knows the machine was told."""
    sink = RecordingSink()
    egm = SasEgm(1, Ledger(sink.waiter.poke), play=PlayModel(11, 2.0), serial="J1")
    journal = PollJournal(tmp_path / "line.journal")
    seen: list[tuple[int | None, int, int | None]] = []

    def at_record(event) -> None:
        if event.source is not None:
            entries = journal.entries()
            last = max(entries, key=lambda a: entries[a][0])
            seen.append((event.source.poll_counter, journal.counter, last))

    sink.on_record = at_record
    await play_through_driver(egm, sink, 60, settings=SasSettings(rte=rte), journal=journal)
    assert len(seen) > 20
    assert all(stamped == current and last == 1 for stamped, current, last in seen), seen[:5]
    counters = [stamped for stamped, _, _ in seen]
    assert counters == sorted(set(counters))   # every one after a frame of its own (the ACK)
    assert journal.counter > counters[-1]


def test_an_identical_retransmission_of_the_line_s_last_frame_keeps_the_counter(tmp_path) -> None:
    """A retry or the restart probe repeating the last frame is an implied NACK, not an ACK."""
    journal = PollJournal(tmp_path / "p.journal")
    assert journal.record(bytes.fromhex("81")) == 1
    assert journal.record(bytes.fromhex("81")) == 1      # the same poll again: NACK
    assert journal.record(bytes.fromhex("82")) == 2
    assert journal.record(bytes.fromhex("81")) == 3      # not the line's last frame: a new poll
    journal.close()
    again = PollJournal(tmp_path / "p.journal")
    assert again.record(bytes.fromhex("81")) == 3        # the restart probe repeating it


def test_a_sync_gp_left_last_on_the_line_is_sent_again_first() -> None:
    """The ACK (sync GP) was journaled and the process died, perhaps before writing it: the
    new host sends it first, then probes the machine with its own last frame."""
    host = SasHost("p", [1], HostConfig(rte=True, sync_address=9),
                   last_polls={1: bytes.fromhex("81"), 9: bytes.fromhex("89")}, first_probe=9)
    host.handle_timer(0.0)
    assert [f.data for f in host.frames_to_send()] == [bytes.fromhex("89"), bytes.fromhex("81")]


def test_identities_survive_reopening_and_an_unreadable_file_means_none(tmp_path) -> None:
    path = tmp_path / "line.journal"
    journal = PollJournal(path)
    assert journal.identities() == {}
    journal.record_identity(1, ("S1", "1234", "AT/SIM001"))
    journal.record_identity(2, (None, None, "AT/SIM001"))
    journal.close()
    identity_file = tmp_path / "line.journal.identity"
    assert identity_file.stat().st_mode & 0o777 == 0o600
    assert PollJournal(path).identities() == {1: ("S1", "1234", "AT/SIM001"),
                                              2: (None, None, "AT/SIM001")}
    identity_file.write_text("{not json")
    assert PollJournal(path).identities() == {}


async def test_a_machine_swapped_while_the_gateway_was_stopped_is_reported(
        tmp_path, autojump_clock: trio.abc.Clock) -> None:
    """The identity discovery confirmed is kept in the journal; after a restart with another
    machine behind the address, the first discovery reports machineReplaced (and the events
    after it carry the new serial). The same machine again: nothing to report."""
    journal_path = tmp_path / "line.journal"
    replaced: list[list[str]] = []
    for serial in ("OLD1", "NEW2", "NEW2"):
        sink = RecordingSink()
        egm = SasEgm(1, Ledger(sink.waiter.poke), play=PlayModel(3, 0.5), serial=serial)
        journal = PollJournal(journal_path)
        await play_through_driver(egm, sink, 20, journal=journal)
        journal.close()
        events = [e for e in sink.recorded if e.type == "machineReplaced"]
        replaced.append([e.data["previous_serial"] for e in events])
        if events:
            later = sink.recorded[sink.recorded.index(events[0]) + 1:]
            assert later and all(e.machine.serial == serial for e in later)
    assert replaced == [[], ["OLD1"], []]
