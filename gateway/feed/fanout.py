"""Fan-out: committed events and alert-board changes to every connected client, bounded.

Commits reach the feed through `Outbox.commit_listeners`, called in the trio thread by the
outbox writer, so the listener (`Fanout.on_commit`) does almost nothing: it updates the alert
board and appends the envelopes to a pending list. One fan-out task flushes that list at once
after a quiet spell and then after each pause (at least `batch_interval_s`, longer when the last
flush queued many frames: about `max_frames_per_s` in total). A flush selects the events once per
distinct client filter, encodes each selected event to JSON once, builds one `events` frame per
filter and puts it (non-blocking) into each client's bounded queue, 16 clients at a time with an
idle gap between (see `Fanout.flush` for why a gap and not just a yield). One sender task per
client (gateway/feed/session.py) drains its queue, merging what is waiting into one frame. So the
work per event is one encode, and the senders' work is bounded by the frame budget however many
clients connect or however busy the floor is. A client whose queue passes `client_queue` messages
is closed with 1008 "too slow", so a stalled browser never slows the outbox
(docs/feed-protocol.md 7a).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from gateway.events import rfc3339
from gateway.feed.protocol import EVENTS_FRAME_OVERHEAD, FeedSession, dumps, envelope_json, events_frame
from gateway.feed.settings import FeedSettings
from gateway.feed.state import AlertBoard, Change

__all__ = ["CLOSE_TIMEOUT_S", "Batch", "Client", "Fanout", "FeedStatistics", "Item",
           "live_frame", "pause", "weight"]

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 5.0       # how long a closing handshake (or a "too slow" close) may take
FANOUT_CHUNK = 16           # clients served in one go during a flush ...
FANOUT_GAP_S = 0.001        # ... then the trio thread idles this long (see Fanout.flush)


@dataclass(frozen=True, slots=True)
class Batch:
    """Events for one frame, in seq order: their seqs, their encoded envelopes and the frame
    itself. Shared, read-only, by every client whose filter selected the same events."""

    seqs: tuple[int, ...]
    texts: tuple[str, ...]
    frame: str


# What a client's queue holds: ("text", str) | ("events", Batch) | ("replay", from_seq, high)
# | ("close",).
Item = tuple[Any, ...]


def weight(item: Item) -> int:
    """How many messages an item counts for against `client_queue`: each event is one."""
    return len(item[1].seqs) if item[0] == "events" else 1


@dataclass(eq=False)
class Client:
    """A connected, authenticated staff client and its bounded outgoing queue. The queue is
    bounded in messages (each event one), not in items, so batching changes nothing about how
    far behind a client may fall: at most `queue_size` messages plus one flush's worth."""

    session: FeedSession
    remote: str
    queue_size: int
    sender_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    too_slow: bool = False
    closing: tuple[int, str] | None = None   # set by `close_soon`: the sender closes with it
    skip_through: int = 0
    queued: int = 0

    def __post_init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Item](math.inf)

    def offer(self, item: Item) -> bool:
        """Queue without blocking. Return False if the client is (now) too slow: past
        `queue_size` messages it gets nothing more, and its sender has CLOSE_TIMEOUT_S to get the
        1008 close out before the connection is cut."""
        if self.too_slow:
            return False
        cost = weight(item)
        # A client with nothing waiting is not behind, however many events one flush carries.
        if self.queued and self.queued + cost > self.queue_size:
            self.too_slow = True
            self.sender_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
            return False
        self.queued += cost
        self.send.send_nowait(item)
        return True

    def close_soon(self, code: int, reason: str) -> None:
        """Close ahead of anything still queued (its token was revoked)."""
        if self.closing is None and not self.too_slow:
            self.closing = (code, reason)
            self.send.send_nowait(("close",))


@dataclass(frozen=True, slots=True)
class FeedStatistics:
    """A snapshot of the fan-out's work since start, for tests, benchmarks and diagnostics."""

    clients: int
    events_encoded: int     # envelopes encoded to JSON for live delivery (at most once each)
    flushes: int            # fan-out rounds
    frames_queued: int      # events frames put into client queues
    frames_sent: int        # frames written by the senders (merged frames count once)
    dropped: int            # clients dropped as too slow


class Fanout:
    """The connected clients and what is committed but not yet handed to them. `on_dropped` is
    called once for each client dropped as too slow (the metric)."""

    def __init__(self, settings: FeedSettings, board: AlertBoard,
                 on_dropped: Callable[[], object] | None = None) -> None:
        self.settings = settings
        self.board = board
        self.clients: set[Client] = set()
        self.on_dropped = on_dropped
        self._priming = True
        self._backlog: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []   # committed, not yet fanned out
        self._board_changed = False
        self._wake = trio.Event()
        self._urgent = trio.Event()   # the board changed: do not wait out the batching pause
        self._flush_lock = trio.Lock()
        self.encoded = self.flushes = self.frames_queued = self.frames_sent = 0
        self.dropped = 0

    def statistics(self) -> FeedStatistics:
        return FeedStatistics(clients=len(self.clients), events_encoded=self.encoded,
                              flushes=self.flushes, frames_queued=self.frames_queued,
                              frames_sent=self.frames_sent, dropped=self.dropped)

    def primed(self) -> None:
        """The board holds the recent history: what was committed meanwhile is news now."""
        self.board.drain()
        self._priming = False
        backlog, self._backlog = self._backlog, []
        if backlog:
            self.on_commit(backlog)

    def on_commit(self, envelopes: list[dict[str, Any]]) -> None:
        """Called by the outbox writer after each commit: keep it to bookkeeping, no encoding and
        no per-client work (that is the fan-out task's, off the writer's path)."""
        if self._priming:
            self._backlog.extend(envelopes)
            return
        for envelope in envelopes:
            if self.board.apply(envelope):
                self._board_changed = True
                self._urgent.set()
        if self.clients:
            self._pending.extend(envelopes)
        self._wake.set()

    async def run(self) -> None:
        """Flush at once when events arrive after a quiet spell, then pause: a client gets at
        most one events frame per pause however busy the floor is, and the pause grows with the
        frames the last flush queued, so the senders' work stays near `max_frames_per_s` however
        many clients are connected (each client's frames then get bigger and a little later)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            frames = await self.flush()
            # The frame budget is always kept; the rest of the pause (the batching of routine
            # events) is cut short by a change to the alert board: staff see alerts first.
            budget = frames / self.settings.max_frames_per_s
            await trio.sleep(budget)
            rest = pause(frames, self.settings) - budget
            if rest > 0 and not self._board_changed:
                with trio.move_on_after(rest):
                    await self._urgent.wait()
            self._urgent = trio.Event()

    async def flush(self) -> int:
        """Hand everything committed so far to the clients' queues, in seq order. The lock keeps
        two flushes (the fan-out task's and an acknowledgement's) from interleaving."""
        async with self._flush_lock:
            envelopes, self._pending = self._pending, []
            self._board_changed = False
            # Drained even with nobody connected: a client that joins gets a snapshot.
            changes = self.board.drain()
            if not self.clients or (not envelopes and not changes):
                return 0
            self.flushes += 1
            deltas: dict[frozenset[str], str] = {}
            groups: dict[Any, list[Client]] = {}
            for client in list(self.clients):
                groups.setdefault(client.session.view(), []).append(client)
            encoded: dict[int, str] = {}
            served = queued = 0
            for members in groups.values():
                session = members[0].session
                batches = self._batches([e for e in envelopes if session.wants(e)], encoded)
                hidden = session.hidden_alerts()
                if changes and hidden not in deltas:
                    deltas[hidden] = delta_message(changes, hidden)
                alerts = deltas.get(hidden)
                for client in members:
                    for batch in batches:
                        if self.offer(client, ("events", batch)):
                            self.frames_queued += 1
                            queued += 1
                    if alerts is not None and self.offer(client, ("text", alerts)):
                        queued += 1
                    served += 1
                    if served % FANOUT_CHUNK == 0:
                        # Let the chunk's senders run, then leave the trio thread idle for a
                        # moment. Yielding to the scheduler is not enough: while this thread
                        # runs Python, the outbox's commit thread waits for the GIL, up to the
                        # 5 ms switch interval each time it needs it. Idle gaps keep a flush to
                        # hundreds of clients from adding that to every commit it overlaps.
                        await trio.sleep(FANOUT_GAP_S)
            return queued

    def _batches(self, envelopes: list[dict[str, Any]], encoded: dict[int, str]) -> list[Batch]:
        """Frames of at most `max_frame_bytes` (or one event) for these envelopes, each envelope
        encoded at most once per flush, whichever filters select it."""
        batches: list[Batch] = []
        seqs: list[int] = []
        texts: list[str] = []
        size = EVENTS_FRAME_OVERHEAD
        for envelope in envelopes:
            seq = envelope["seq"]
            text = encoded.get(seq)
            if text is None:
                text = encoded[seq] = envelope_json(envelope)
                self.encoded += 1
            if texts and size + len(text) + 1 > self.settings.max_frame_bytes:
                batches.append(Batch(tuple(seqs), tuple(texts), events_frame(texts)))
                seqs, texts, size = [], [], EVENTS_FRAME_OVERHEAD
            seqs.append(seq)
            texts.append(text)
            size += len(text) + 1
        if texts:
            batches.append(Batch(tuple(seqs), tuple(texts), events_frame(texts)))
        return batches

    def offer(self, client: Client, item: Item) -> bool:
        """Queue for a client; drop it (once) when that makes it too slow."""
        if client.offer(item):
            return True
        if client in self.clients:
            self.clients.discard(client)
            self.dropped += 1
            if self.on_dropped is not None:
                self.on_dropped()
            log.warning("feed client too slow, dropping", client=client.remote,
                        name=client.session.identity and client.session.identity.name,
                        queued=client.queued)
        return False

    def broadcast(self, message: str) -> None:
        """One text message to every client (a status change)."""
        for client in list(self.clients):
            self.offer(client, ("text", message))


def delta_message(changes: list[Change], hidden: frozenset[str] = frozenset()) -> str:
    """The changes but those to alerts of the `hidden` kinds (the role's: ALERT_ROLES); `base`
    and `version` stay the board's, so a client of any role follows every version."""
    return dumps({"type": "alerts_delta", "time": rfc3339(time.time()),
                  "base": changes[0].version - 1, "version": changes[-1].version,
                  "changes": [c.as_dict() for c in changes if c.alert.kind not in hidden]})


def pause(frames: int, settings: FeedSettings) -> float:
    """How long the fan-out waits after a flush that queued `frames` frames."""
    return max(settings.batch_interval_s, frames / settings.max_frames_per_s)


def live_frame(batches: list[Batch], skip_through: int) -> str | None:
    """One events frame for these batches, without events a replay already sent (seq at or
    below `skip_through`); None if nothing is left. One batch is sent as built."""
    if len(batches) == 1 and batches[0].seqs[0] > skip_through:
        return batches[0].frame
    texts = [text for batch in batches for seq, text in zip(batch.seqs, batch.texts, strict=True)
             if seq > skip_through]
    return events_frame(texts) if texts else None
