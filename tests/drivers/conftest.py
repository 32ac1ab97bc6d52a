"""Shared fakes for driver tests: a recording sink (a fake, not a mock) and a sans-I/O pairing
of SasHost with the simulated EGM."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio

from drivers.base import MachineEvent, MachineRef, SourceRef
from drivers.link.memory import MemoryHostLink, memory_link_pair
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sas.host import Acknowledged, CommandFinished, Report, SasHost
from drivers.sas.journal import PollJournal
from drivers.sim.egm import SasEgm
from drivers.sim.oracle import Verdict, judge
from drivers.sim.runner import run_egm


class Waiter:
    """Wakes waiters whenever something they watch changed (no polling sleeps)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def poke(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self._event = trio.Event()
            await self._event.wait()


@dataclass
class RecordingSink:
    """Keeps what the driver recorded and acknowledged; optionally claims redeliveries."""

    recorded: list[MachineEvent] = field(default_factory=list)
    acknowledged_events: list[MachineEvent] = field(default_factory=list)
    claim: set[tuple[int, bytes]] = field(default_factory=set)  # (code, payload) to claim
    on_record: Callable[[MachineEvent], None] | None = None
    waiter: Waiter = field(default_factory=Waiter)

    async def record(self, event: MachineEvent) -> None:
        if self.on_record is not None:
            self.on_record(event)
        self.recorded.append(event)
        self.waiter.poke()

    def acknowledged(self, event: MachineEvent) -> None:
        self.acknowledged_events.append(event)
        self.waiter.poke()

    async def redelivered(self, event: MachineEvent) -> None:
        pass

    def is_redelivery(self, machine: MachineRef, source: SourceRef) -> bool:
        key = (source.code, source.payload)
        if key in self.claim:
            self.claim.discard(key)
            return True
        return False

    def exceptions(self) -> list[MachineEvent]:
        return [e for e in self.recorded if e.source is not None]


async def play_through_driver(egm: SasEgm, sink: RecordingSink, seconds: float, *,
                              port: str = "mem0", settings: SasSettings | None = None,
                              journal: PollJournal | None = None) -> SasDriver:
    """`egm` plays for `seconds` against a SasDriver over a memory link, then stops playing;
    returns once every exception it raised is settled (acknowledged or lost), with the driver
    stopped. The ledger must wake `sink.waiter` (Ledger(sink.waiter.poke))."""
    host_end, egm_end = memory_link_pair()

    async def opener() -> MemoryHostLink:
        return host_end

    driver = SasDriver(port, opener, [egm.address], settings, journal=journal)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_egm, egm, egm_end)
        await nursery.start(driver.run, sink)
        await trio.sleep(seconds)
        egm.play.stop()
        await sink.waiter.until(lambda: not egm.ledger.pending())
        nursery.cancel_scope.cancel()
    return driver


class Pair:
    """SasHost wired to one or more SasEgm on a virtual clock, no trio: every frame the host
    emits is delivered to every machine, every answer goes back after `latency_s`."""

    def __init__(self, host: SasHost, egms: list[SasEgm], latency_s: float = 0.003) -> None:
        self.host, self.egms, self.latency = host, egms, latency_s
        self.now = 0.0
        self.recorded: list[MachineEvent] = []
        self.resent: list[MachineEvent] = []  # re-sent after a machine reset, not recorded
        self.acked: list[MachineEvent] = []
        self.other: list[object] = []
        self.frames: list[bytes] = []
        self.sent_at: list[tuple[float, bytes]] = []
        self.check_durable = True
        self.drop_to_host = 0
        # Rewrite answers on their way to the host (junk, cuts): the first function rewrites the
        # first answer for which it returns bytes (None: not this one), then the next one.
        self.mangle: list[Callable[[bytes], bytes | None]] = []

    def _acked_count(self) -> int:
        return sum(e.acknowledged_at is not None for egm in self.egms
                   for e in egm.ledger.entries)

    def step(self) -> None:
        host = self.host
        host.handle_timer(self.now)
        progressed = True
        while progressed:
            progressed = False
            for frame in host.frames_to_send():
                progressed = True
                self.frames.append(frame.data)
                self.sent_at.append((self.now, frame.data))
                words = [frame.data[0] | 0x100, *frame.data[1:]]
                for egm in self.egms:
                    reply = egm.receive_words(words, self.now)
                    if reply and self.mangle and (new := self.mangle[0](reply)) is not None:
                        self.mangle.pop(0)
                        reply = new
                    if reply and self.drop_to_host:
                        self.drop_to_host -= 1
                    elif reply:
                        self.now += self.latency
                        if egm.answer_delay:
                            # A slow answer ("slow" fault): the host's timer runs first.
                            self.now += egm.answer_delay
                            egm.answer_delay = 0.0
                            host.handle_timer(self.now)
                        if egm.answer_split is not None:
                            # Two parts with a gap: the host's timer runs in between.
                            (cut, gap), egm.answer_split = egm.answer_split, None
                            host.receive_data(reply[:cut], self.now)
                            self.now += gap
                            host.handle_timer(self.now)
                            reply = reply[cut:]
                        host.receive_data(reply, self.now)
            while (event := host.next_event()) is not None:
                progressed = True
                match event:
                    case Report(ev, token, resent) if token is not None:
                        if self.check_durable:
                            # Nothing this event stands for was acknowledged before it is durable.
                            assert self._acked_count() == len(self.acked)
                        (self.resent if resent else self.recorded).append(ev)
                        host.durable(token)
                    case Acknowledged(ev):
                        self.acked.append(ev)
                    case Report() | CommandFinished():
                        self.other.append(event)
        timers = [t for t in (host.get_timer(), *(e.get_timer() for e in self.egms))
                  if t is not None]
        self.now = max(self.now, min(timers))
        for egm in self.egms:
            egm.handle_timer(self.now)

    def loss_markers(self) -> list[MachineEvent]:
        return [e.event for e in self.other
                if isinstance(e, Report) and e.event.type == "lossMarker"]

    def verdict(self) -> Verdict:
        """The simulator's ledger against what the host reported (drivers/sim/oracle.py)."""
        entries = [e for egm in self.egms for e in egm.ledger.entries]
        recorded = [(e.source.code, e.source.payload) for e in self.recorded
                    if e.source is not None]
        resent = sum(1 for e in self.resent if e.source is not None and not e.source.payload)
        return judge(entries, recorded, len(self.loss_markers()), resent_dataless=resent,
                     lone_bytes=sum(egm.ledger.lone_bytes for egm in self.egms))

    def run_until(self, t: float) -> None:
        while self.now < t:
            self.step()

    def run_until_quiet(self, limit: float = 3600.0) -> None:
        start = self.now
        while any(egm.ledger.pending() for egm in self.egms):
            assert self.now - start < limit, "exceptions never acknowledged"
            self.step()


@pytest.fixture
def recording_sink() -> RecordingSink:
    return RecordingSink()
