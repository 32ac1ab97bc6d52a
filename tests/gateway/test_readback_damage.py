"""The feed and the uplink on a damaged outbox (issue 15): one flipped byte in a row older than the
start-up check's window made `FeedServer._prime` raise UnicodeDecodeError at every start (a
restart loop) and, without the feed, the receiver refused the row (4002) and the uplink was stuck
forever. Both must go on past it: the damaged row is quarantined (a signed lossMarker explains the
hole, docs/uplink-protocol.md P-HOLE-1) and everything intact is served and delivered."""

from __future__ import annotations

import time

import pytest
import trio
from trio_websocket import open_websocket_url

from drivers.base import MachineRef
from gateway.events import system_draft
from gateway.outbox import TAIL_CHECK_ROWS
from gateway.receiver import ReceiverSettings, serve_receiver
from gateway.signing import decode_envelope
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.test_feed_server import auth, http_get
from tests.gateway.test_feed_server import start_feed as _start_feed
from tests.gateway.test_outbox_damage import markers
from tests.gateway.test_outbox_integrity import draft, execute, run_writer_around
from tests.gateway.uplink_fakes import register, write_token

start_feed = _start_feed  # the fixture, shared


def break_utf8(path, seq: int) -> None:
    """Damage a string in row `seq` the way bit rot did: its bytes no longer UTF-8."""
    body = bytes(execute(path, "SELECT body FROM events WHERE seq=?", seq)[0][0])
    at = body.index(b"reel")
    damaged = body[:at] + b"\xff" + body[at + 1:]
    with pytest.raises(UnicodeDecodeError):
        decode_envelope(damaged)   # what the feed's prime met, unchecked
    execute(path, "UPDATE events SET body=? WHERE seq=?", damaged, seq)


async def damaged_history(make_outbox, path) -> None:
    """Two tilts (seq 1 and 2) and more than the start-up window of events after them; then
    seq 1 damaged, far older than the newest TAIL_CHECK_ROWS: not checked at open."""
    first = make_outbox()

    async def history() -> None:
        now = time.time()
        await first.append(system_draft("tilt", {"kind": "reel"}, now=now,
                                        machine=MachineRef("p1", 1)))            # seq 1
        await first.append(system_draft("tilt", {"kind": "reel"}, now=now,
                                        machine=MachineRef("p2", 1)))            # seq 2
        for i in range(TAIL_CHECK_ROWS + 40):
            await first.append(draft(i))
    await run_writer_around(first, history)
    first.close()
    break_utf8(path, 1)


async def test_an_old_damaged_row_does_not_stop_the_feed(make_outbox, outbox_settings,
                                                        start_feed):
    path = outbox_settings.path
    await damaged_history(make_outbox, path)
    with trio.fail_after(20):
        feed = await start_feed()   # primed from the whole outbox (history_events 10,000)
        assert (await http_get(feed.port, "/health"))[0] == 200
        async with open_websocket_url(feed.url) as ws:
            welcome = await auth(ws)
        assert welcome["type"] == "welcome"
        # The intact tilt is on the board; the damaged one is not (its row is unreadable).
        assert [(a["kind"], a["machine"]) for a in welcome["state"]["alerts"]] == [
            ("tilt", "p2/1")]
        # The read-back found the damage: the next commit quarantines the row, signed.
        while not execute(path, "SELECT seq FROM quarantine"):
            await feed.outbox.append(draft(0))
    assert execute(path, "SELECT seq FROM quarantine") == [(1,)]
    (marker,) = markers(path)
    assert (marker["first_seq"], marker["last_seq"]) == (1, 1)


async def test_an_old_damaged_row_does_not_stop_the_uplink(make_outbox, outbox_settings,
                                                          tmp_path):
    path = outbox_settings.path
    await damaged_history(make_outbox, path)
    outbox = make_outbox()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            handle = await nursery.start(serve_receiver, ReceiverSettings(
                port=0, db_path=tmp_path / "platform.db"))
            register(handle.store, outbox, "tok")
            client = UplinkClient(UplinkSettings(
                url=handle.url, token_file=write_token(tmp_path, "tok"), backoff_initial_s=0.01,
                backoff_max_s=0.05), outbox)  # type: ignore[arg-type]
            await nursery.start(client.run)
            # Past the hole: the marker (written after the read-back found the damage) and
            # uplinkUp are delivered too, on the one connection.
            while not (execute(path, "SELECT seq FROM quarantine")
                       and outbox.delivered_seq == outbox.last_seq):
                await client.wait_changed()
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    assert stats["reconnects"] == 0 and stats["connected"]
    stored = handle.store.events(outbox.gateway_id, outbox.epoch)
    assert [seq for seq, _ in stored] == list(range(2, outbox.last_seq + 1))
    (marker,) = markers(path)
    assert (marker["first_seq"], marker["last_seq"]) == (1, 1)
    figures = handle.store.figures(outbox.gateway_id)
    assert figures["gaps"] == 1 and figures["bad_signatures"] == 0
