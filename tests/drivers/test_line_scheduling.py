"""Line scheduling (issue 13 finding 8): dead addresses back off, exponentially and capped, so a
live machine keeps its poll rate beside them; an idle RTE machine's silent GPs never count as
dead; the wait for an answer follows the port's measured latency, not a fixed 100 ms."""

from __future__ import annotations

import itertools

import pytest
import trio

from drivers.link import SasLink, TxFrame
from drivers.link.memory import memory_link_pair
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sas.host import BYTE_TIME_S, HostConfig, SasHost
from drivers.sim.egm import SasEgm
from drivers.sim.ledger import Ledger
from drivers.sim.line import run_line
from drivers.sim.machine import PlayModel

from .conftest import Pair, RecordingSink

INTERVAL = 0.2


class CountingLink(SasLink):
    """Host link that notes when each frame went out, by address."""

    def __init__(self, inner: SasLink) -> None:
        self.inner = inner
        self.sent: list[tuple[float, int]] = []

    async def send(self, frame: TxFrame) -> None:
        self.sent.append((trio.current_time(), frame.data[0] & 0x7F))
        await self.inner.send(frame)

    async def receive_some(self) -> bytes:
        return await self.inner.receive_some()

    async def receive_words(self) -> list[int]:
        return await self.inner.receive_words()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _one_live_twelve_dead(rte: bool, seconds: float) -> tuple[CountingLink, SasDriver,
                                                                      SasEgm]:
    host_end, egm_end = memory_link_pair()
    link = CountingLink(host_end)
    sink = RecordingSink()
    egm = SasEgm(1, Ledger(sink.waiter.poke), play=PlayModel(3, 0.5), rte_capable=rte)

    async def opener() -> SasLink:
        return link

    driver = SasDriver("line", opener, list(range(1, 14)),
                       SasSettings(poll_interval_s=INTERVAL, rte=rte))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_line, [egm], egm_end)
        await nursery.start(driver.run, sink)
        await trio.sleep(seconds)
        egm.play.stop()
        await sink.waiter.until(lambda: not egm.ledger.pending())
        nursery.cancel_scope.cancel()
    return link, driver, egm


@pytest.mark.parametrize("rte", [True, False])
async def test_dead_addresses_do_not_starve_the_live_machine(
        rte: bool, autojump_clock: trio.abc.Clock) -> None:
    link, driver, egm = await _one_live_twelve_dead(rte, 200.0)
    # Every frame to the live machine counts (GPs, long polls, retries), as in bench/sas_poll.py.
    window = [(t, a) for t, a in link.sent if 20.0 <= t < 200.0]
    live = sum(1 for _, a in window if a == 1)
    assert live >= 0.95 * 180.0 / INTERVAL
    assert sum(e.lost for e in egm.ledger.entries) == 0  # no overflow of its own buffer
    stats = driver.statistics().machines
    assert stats[1]["online"] and stats[1]["poll_backoff_s"] == 0.0
    # An idle RTE machine's silent GPs are "nothing to report", never a missed poll.
    assert stats[1]["timeouts"] <= 3
    dead = [t for t, a in window if a == 7]
    gaps = [b - a for a, b in itertools.pairwise(dead)]
    # At most the cap, plus the exchange that held the line when it came due (an idle RTE
    # machine's GP series: the GP and its silence retries, one interval apart).
    assert max(gaps) <= HostConfig().offline_backoff_max_s + 2 * INTERVAL + 0.1
    assert min(gaps[-5:]) >= HostConfig().offline_backoff_max_s - 0.1  # capped, not reset
    assert all(not s["online"] for a, s in stats.items() if a != 1)


def test_dead_address_backoff_doubles_from_the_interval() -> None:
    host = SasHost("p", [1, 2], HostConfig(rte=False, poll_interval_s=INTERVAL))
    pair = Pair(host, [SasEgm(1, Ledger())])
    pair.run_until(60.0)
    times = [t for t, wire in pair.sent_at if wire[0] & 0x7F == 2]
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    # The restart probe, discovery's first poll, then 0.4, 0.8, ... s apart.
    assert gaps[:6] == pytest.approx([0.2, 0.2, 0.4, 0.8, 1.6, 3.2], abs=0.15)
    assert set(gaps[7:]) == {5.0}


def test_the_answer_wait_is_wire_time_plus_window_plus_measured_latency() -> None:
    host = SasHost("p", [1, 2], HostConfig(rte=False, poll_interval_s=INTERVAL,
                                           response_timeout_s=0.1))
    pair = Pair(host, [SasEgm(1, Ledger())], latency_s=0.004)
    pair.run_until(30.0)
    latency = host.port_latency_s
    assert latency is not None and 0.002 < latency < 0.004
    # A poll to the dead address (after the sync GP) is given up after their wire time +
    # 20 ms + the latency.
    waits = []
    while len(waits) < 3 and pair.now < 120.0:
        before = len(pair.sent_at)
        pair.step()
        when, wire = pair.sent_at[-1]
        if len(pair.sent_at) > before and wire[0] & 0x7F == 2:
            waits.append(host.get_timer() - when)  # type: ignore[operator]
    assert len(waits) == 3
    for wait in waits:
        assert wait == pytest.approx(2 * BYTE_TIME_S + 0.020 + latency, abs=0.001)


def test_two_addresses_answering_as_one_machine_are_reported() -> None:
    # One machine set up to answer at two addresses (or two with one identity): after
    # discovery the second address reports the serial and asset the first already has.
    from drivers.sas.host import LinkNote

    twins = [SasEgm(a, Ledger(), serial="SAME1", asset=77) for a in (1, 2)]
    host = SasHost("p", [1, 2, 3], HostConfig(rte=False))
    notes: list[LinkNote] = []
    next_event = host.next_event

    def watched() -> object:
        event = next_event()
        if isinstance(event, LinkNote):
            notes.append(event)
        return event

    host.next_event = watched  # type: ignore[method-assign]
    pair = Pair(host, [*twins, SasEgm(3, Ledger())])
    pair.run_until(10.0)
    assert notes
    assert {frozenset((n.address, int(n.kind.rsplit(" ", 1)[1]))) for n in notes} == {
        frozenset((1, 2))}  # the machine at 3 is not involved
