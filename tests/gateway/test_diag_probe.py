"""`diag probe` on a line the gateway polls (issue 13 finding 5): it refuses a locked device,
resumes from the port's poll journal so its first frame acknowledges nothing unrecorded, leaves
an RTE event unacknowledged for the gateway to collect, spaces its polls to one machine, and
warns about a slow USB latency timer. Machines on real pseudo-terminals."""

from __future__ import annotations

import itertools
import os
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from drivers.link import SasLink, TxFrame, open_link
from drivers.link import tty as link_tty
from drivers.link.tty import PtyEgmLink
from drivers.sas import messages
from drivers.sas import probe as sas_probe
from drivers.sas.codes import Exc
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sas.journal import PollJournal
from drivers.sim.egm import SasEgm
from drivers.sim.ledger import Ledger
from drivers.sim.runner import run_egm
from gateway import diag
from tests.drivers.conftest import RecordingSink


class StampedEgmLink(PtyEgmLink):
    """The machine's end, noting when each poll to `address` arrived."""

    def __init__(self, fd: int, address: int) -> None:
        super().__init__(fd)
        self.address = address
        self.polls: list[float] = []

    async def receive_words(self) -> list[int]:
        words = await super().receive_words()
        now = trio.current_time()
        self.polls += [now for w in words if w & 0x100 and w & 0x7F == self.address]
        return words


@asynccontextmanager
async def machine_on_pty(egm: SasEgm) -> AsyncIterator[tuple[str, StampedEgmLink]]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    link = StampedEgmLink(master, egm.address)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_egm, egm, link)
            yield os.ttyname(slave), link
            nursery.cancel_scope.cancel()
    finally:
        await link.aclose()
        os.close(slave)


def _rte_machine_with_an_unrecorded_event(journal: PollJournal, ledger: Ledger) -> SasEgm:
    """What a gateway killed at the wrong moment leaves: an RTE machine that answered the
    journaled GP with an event the gateway never recorded (nor acknowledged)."""
    egm = SasEgm(1, ledger, chirp=False)
    egm.raise_exception(Exc.BILL_ACCEPTED, bytes.fromhex("010200000007"), 0.0)
    for poll in (messages.general_poll(2), messages.rte_mode(1, True), messages.general_poll(1)):
        wire = poll.wire()
        journal.record(wire)
        answer = egm.receive_words([wire[0] | 0x100, *wire[1:]], 0.0)
    assert answer[:2] == b"\x01\xff"  # the event went out, and was lost with the gateway
    return egm


async def _gateway_collects(device: str, journal: PollJournal, egm: SasEgm,
                            sink: RecordingSink) -> None:
    """The gateway starts on the line the probe left: `egm`'s ledger must wake `sink`."""
    driver = SasDriver("port1", lambda: open_link(device), [1],
                       SasSettings(poll_interval_s=0.05, response_timeout_s=0.1),
                       journal=journal)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, sink)
        await sink.waiter.until(lambda: not egm.ledger.pending())
        nursery.cancel_scope.cancel()


async def test_probe_resumes_from_the_journal_and_acknowledges_nothing_unrecorded(
        tmp_path: Path) -> None:
    journal = PollJournal(tmp_path / "port1.journal")
    sink = RecordingSink()
    egm = _rte_machine_with_an_unrecorded_event(journal, Ledger(sink.waiter.poke))
    with trio.fail_after(30):
        async with machine_on_pty(egm) as (device, _):
            report = await sas_probe.probe(device, 1, timeout_s=0.1, journal=journal)
            assert report["resumed_from"] == "81"
            assert report["pending"]["address"] == 1
            assert "event 4F" in report["pending"]["answer"]
            assert report["steps"] == [] and not report["ok"]
            assert any("stopped without acknowledging" in a for a in report["advice"])
            assert egm.ledger.pending()  # still the machine's, unacknowledged
            await _gateway_collects(device, journal, egm, sink)
    assert [(e.source.code, e.source.payload) for e in sink.exceptions()] == [
        (Exc.BILL_ACCEPTED, bytes.fromhex("010200000007"))]


async def test_an_event_seen_mid_probe_is_left_for_the_gateway(tmp_path: Path) -> None:
    journal = PollJournal(tmp_path / "port1.journal")
    sink = RecordingSink()
    egm = SasEgm(1, Ledger(sink.waiter.poke), chirp=False)
    egm.rte = egm.synced = True
    egm.raise_exception(Exc.SLOT_DOOR_OPENED, b"", 0.0)
    with trio.fail_after(30):
        async with machine_on_pty(egm) as (device, _):
            report = await sas_probe.probe(device, 1, timeout_s=0.1, journal=journal)
            [step] = report["steps"]
            assert step["poll"] == "LP 1F" and step["event"] == Exc.SLOT_DOOR_OPENED
            assert any("left it unacknowledged" in a for a in report["advice"])
            assert egm.ledger.pending()
            # The journal's last frame is the probe's LP 1F: the gateway's first poll repeats
            # it (implied NACK), the machine re-sends the event, and it is recorded.
            assert max(journal.entries().values())[1] == bytes.fromhex("011f")
            await _gateway_collects(device, journal, egm, sink)
    assert [e.source.code for e in sink.exceptions()] == [Exc.SLOT_DOOR_OPENED]


async def test_probe_refuses_a_device_the_gateway_holds(tmp_path: Path) -> None:
    egm = SasEgm(1, Ledger(), chirp=False)
    with trio.fail_after(30):
        async with machine_on_pty(egm) as (device, link):
            held = await open_link(device, lock_dir=tmp_path)
            try:
                report = await sas_probe.probe(device, 1, lock_dir=tmp_path)
            finally:
                await held.aclose()
    assert report["busy"] and f"in use by process {os.getpid()}" in report["error"]
    assert "stop it first" in report["advice"][0]
    assert link.polls == []  # not one frame went out
    assert "cannot open" in diag.render_probe(report)


async def test_probe_spaces_polls_to_one_machine(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[float, int]] = []  # measured where the spacing is made: the host's sends

    async def recording_open(*args: object, **kwargs: object) -> SasLink:
        link = await open_link(*args, **kwargs)  # type: ignore[arg-type]
        send = link.send

        async def recorded(frame: TxFrame) -> None:
            sent.append((trio.current_time(), frame.data[0] & 0x7F))
            await send(frame)

        link.send = recorded  # type: ignore[method-assign]
        return link

    monkeypatch.setattr(sas_probe, "open_link", recording_open)
    egm = SasEgm(1, Ledger(), chirp=False, unsupported=frozenset({0x11, 0x15}))
    with trio.fail_after(30):
        async with machine_on_pty(egm) as (device, _):
            report = await sas_probe.probe(device, 1, timeout_s=0.02, spacing_s=0.06)
    assert report["ok"]
    times = [t for t, address in sent if address == 1]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 6  # 1F, 54, 1A, and two attempts at each unsupported meter
    assert min(gaps) >= 0.06


async def test_probe_warns_about_a_slow_latency_timer(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_tty, "adapter_latency_timer_ms", lambda device: 16)
    egm = SasEgm(1, Ledger(), chirp=False)
    with trio.fail_after(30):
        async with machine_on_pty(egm) as (device, _):
            report = await sas_probe.probe(device, 1, timeout_s=0.1)
    assert report["latency_timer_ms"] == 16
    [advice] = [a for a in report["advice"] if "latency timer" in a]
    assert "16 ms" in advice and "latency_timer" in advice


async def test_probe_on_an_endless_stream_of_ff_ends(tmp_path: Path) -> None:
    """Issue 15: `diag probe` on a line that never stops sending 0xFF never ended (each chunk
    pushed the inter-byte deadline on). Each answer wait now has a ceiling; the probe reports
    garbage and stops rather than acknowledge what it cannot read."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    babbler = trio.lowlevel.FdStream(os.dup(master))
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:

                async def babble() -> None:
                    while True:
                        await babbler.send_all(b"\xff" * 256)

                nursery.start_soon(babble)
                started = trio.current_time()
                report = await sas_probe.probe(os.ttyname(slave), 1, timeout_s=0.1)
                took = trio.current_time() - started
                nursery.cancel_scope.cancel()
    finally:
        await babbler.aclose()
        os.close(master)
        os.close(slave)
    assert not report["ok"] and "error" not in report
    [step] = report["steps"]
    assert step["garbage"] and step["unreadable"] and step["attempts"] == 2
    assert "bytes that make no answer" in step["result"]
    assert any("bytes answered a poll to address 127" in a for a in report["advice"])
    # Three answer waits (the sync poll and two attempts), each within its ceiling.
    assert took < 3 * (0.1 + sas_probe.MAX_ANSWER_S) + 1.0
