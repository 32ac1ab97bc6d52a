"""An accept loop that survives running out of file descriptors (the feed and the control socket).

`accept()` fails with EMFILE / ENFILE (no descriptor left), ENOMEM or ENOBUFS when the process or
the system is out of room. That is the world being full, not a bug: raising it stopped the daemon
(a `diag` during a connection flood did). Here it is counted, logged at most once a minute with
how often it happened, and accepting backs off (0.1 s doubling to 2 s) so the descriptors the
outbox, the uplink and the serial ports need are freed by the connections already closing.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from gateway.limits import LogThrottle

__all__ = ["CAPACITY_ERRNOS", "serve_accepting", "summarize_suppressed"]

log = structlog.get_logger(__name__)

CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0


async def serve_accepting(listener: trio.abc.Listener[Any],
                          handler: Callable[[Any], Awaitable[None]], nursery: trio.Nursery, *,
                          name: str, on_full: Callable[[], None] | None = None) -> None:
    """Accept forever, each stream to `handler` in `nursery`. `on_full` is called (e.g. to
    count a metric) whenever accepting failed for lack of descriptors or memory."""
    throttle = LogThrottle(60.0)
    delay = BACKOFF_FIRST_S
    failures = 0
    while True:
        try:
            stream = await listener.accept()
        except OSError as err:
            if err.errno not in CAPACITY_ERRNOS:
                raise
            failures += 1
            if on_full is not None:
                on_full()
            suppressed = throttle.admit(f"{name}:{err.errno}", trio.current_time())
            if suppressed is not None:
                log.error("cannot accept connections: out of file descriptors or memory; "
                          "backing off", listener=name, error=err.strerror or str(err),
                          repeated=suppressed, retry_in_s=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
            continue
        if failures:
            log.warning("accepting connections again", listener=name, failed_accepts=failures)
            failures = 0
        delay = BACKOFF_FIRST_S
        nursery.start_soon(handler, stream)


async def summarize_suppressed(throttle: LogThrottle, message: str, **fields: Any) -> None:
    """Every interval, one line per kind whose repeats `throttle` kept out of the log, with
    the count: an attack that stops still has its size told."""
    while True:
        await trio.sleep(throttle.interval_s)
        for kind, count in throttle.due(trio.current_time()):
            log.warning(message, kind=kind, repeated=count,
                        within_s=throttle.interval_s, **fields)
