"""Why an uplink connection ended: the client's error types, and the mapping from what trio,
trio-websocket and ssl raise to them (a refusal, a TLS failure, the network), so the reconnect
loop in client.py decides on one type and logs one precise reason."""

from __future__ import annotations

import ssl

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError

from gateway.uplink import protocol as proto

__all__ = ["UplinkError", "UplinkRejectedError", "UplinkUnavailableError", "first_failure",
           "translate"]


class UplinkError(Exception):
    """The platform link failed; the client handles these itself and reconnects."""


class UplinkUnavailableError(UplinkError, ConnectionError):
    """Network, TLS, timeout, dead peer, malformed frame: reconnect with jittered backoff."""


class UplinkRejectedError(UplinkError):
    """The platform refused us (HTTP 401/403, close 4001/4002/4003): long backoff and an alert."""


def _tls_failure(err: BaseException) -> str | None:
    """The verification message if `err` (or what caused it) is a TLS certificate failure."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS verification failed: {seen.verify_message or seen.reason}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake failed: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return None


def translate(err: Exception) -> UplinkError | None:
    """Map a foreign exception from one connection to an UplinkError; None means "a bug"."""
    if isinstance(err, UplinkError):
        return err
    if isinstance(err, ConnectionRejected):
        if err.status_code in (401, 403):
            return UplinkRejectedError(f"platform refused the connection: HTTP {err.status_code}")
        return UplinkUnavailableError(f"platform answered HTTP {err.status_code}")
    if isinstance(err, ConnectionClosed):
        code = err.reason.code if err.reason else None
        why = (err.reason.reason or err.reason.name) if err.reason else "closed"
        if code in proto.REFUSAL_CLOSE_CODES:
            return UplinkRejectedError(f"platform closed the connection: {code} {why}")
        return UplinkUnavailableError(f"connection closed: {code} {why}")
    if isinstance(err, (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                        HandshakeError, trio.TooSlowError)):
        return UplinkUnavailableError(_tls_failure(err) or f"{type(err).__name__}: {err}")
    return None


def first_failure(group: BaseExceptionGroup) -> UplinkError | None:
    found: list[tuple[int, UplinkError]] = []
    for exc in _leaves(group):
        translated = translate(exc) if isinstance(exc, Exception) else None
        if translated is not None:
            # A refusal says most; then our own diagnosis; then the broken pipe that followed.
            rank = (0 if isinstance(translated, UplinkRejectedError)
                    else 1 if isinstance(exc, UplinkError) else 2)
            found.append((rank, translated))
    found.sort(key=lambda pair: pair[0])
    return found[0][1] if found else None


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out
