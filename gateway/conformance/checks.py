"""One check per platform rule of docs/uplink-protocol.md (`P-…` ids), in run order.

A check raises `Failed` with what it saw. `needs` names the rules it builds on: when one of them
failed, the check is skipped, so a platform that breaks one rule fails exactly that rule. Checks
judge only their own rule (e.g. the close code, not the error frame before it: P-CLOSE-1 judges
every close of the run at the end). Every check uses fresh epochs, so runs can repeat."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nacl.signing

from gateway.conformance.kit import Blocked, Closed, Conn, Failed, Kit, TimedOut
from gateway.signing import Signer, decode_envelope
from gateway.uplink import protocol as proto

__all__ = ["CHECKS", "NOT_ON_THE_WIRE", "Check"]


@dataclass(frozen=True)
class Check:
    rule: str
    title: str
    run: Callable[[Kit], Awaitable[None]]
    needs: tuple[str, ...] = ()
    needs_command: bool = False


CHECKS: list[Check] = []
BASIC = ("P-HELLO-1", "P-VERIFY-1", "P-ACK-1")

# Rules the kit cannot observe on the wire (registration, operations); listed in the report.
NOT_ON_THE_WIRE = {
    "P-KEY-1": "registration derives the kid from the key",
    "P-TOKEN-1": "token randomness and alphabet; only its SHA-256 stored",
    "P-FAILOVER-1": "every platform URL answers from the same store",
    "P-WELCOME-3": "welcome never names an undurable mark (crash the platform to test)",
    "P-TIME-1": "order by seq, never by timestamp",
    "P-REVOKE-1": "events signed by a revoked kid refused",
    "P-SIZE-1 (16 MiB)": "frames up to 16 MiB (the kit sends 1,000 events)",
}


def check(rule: str, title: str, *, needs: tuple[str, ...] = (),
          needs_command: bool = False) -> Callable[[Callable[[Kit], Awaitable[None]]],
                                                   Callable[[Kit], Awaitable[None]]]:
    def register(fn: Callable[[Kit], Awaitable[None]]) -> Callable[[Kit], Awaitable[None]]:
        CHECKS.append(Check(rule, title, fn, needs, needs_command))
        return fn
    return register


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


async def acked(conn: Conn, refused: str) -> int:
    """The platform's next ack; `Failed` naming what was `refused` (and the close code) if it
    closes instead. Most checks send something the spec says MUST be stored, then this."""
    try:
        return await conn.ack()
    except Closed as closed:
        raise Failed(f"{refused} (close {closed.code})") from None


async def expect_close(conn_next: Callable[[], Awaitable[Closed]], code: int) -> None:
    try:
        closed = await conn_next()
    except TimedOut:
        raise Failed(f"expected close {code}; the connection stayed open") from None
    expect(closed.code == code, f"expected close {code}, got {closed.code}")


async def mark(kit: Kit, stream_epoch: str, gateway_id: str | None = None) -> int:
    """The platform's high_water for a stream, by a fresh hello."""
    stream = kit.stream(stream_epoch, gateway_id)
    async with kit.session(stream) as (_, welcome):
        return welcome.high_water


# -- upgrade and hello --------------------------------------------------------------------------

@check("P-TRANSPORT-1", "another path is HTTP 404")
async def _path(kit: Kit) -> None:
    status = await kit.http_status(path="/v1/not-the-stream")
    expect(status == 404, f"upgrade on another path answered {status or 'accepted'}, not 404")


@check("P-AUTH-1", "no bearer token is HTTP 401")
async def _no_token(kit: Kit) -> None:
    status = await kit.http_status(authorization=None)
    expect(status == 401, f"upgrade without Authorization answered {status or 'accepted'}")


@check("P-AUTH-2", "an unknown token is HTTP 403")
async def _unknown_token(kit: Kit) -> None:
    status = await kit.http_status(token="kit-" + kit.new_epoch() * 3)
    expect(status == 403, f"upgrade with an unknown token answered {status or 'accepted'}")


@check("P-HELLO-1", "welcome answers a hello, echoes the epoch, high_water 0 for a new stream")
async def _hello(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (_, welcome):
        expect(welcome.epoch == stream.epoch, f"welcome epoch {welcome.epoch!r}")
        expect(welcome.high_water == 0, f"new stream welcomed at {welcome.high_water}")


@check("P-VERIFY-1", "an event signed as section 4 says is accepted", needs=("P-HELLO-1",))
async def _verify(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        await conn.send(proto.Events(tuple(stream.next(1))))
        # The ack's value is P-ACK-1's business.
        await acked(conn, "a correctly signed event was refused: the signature is Ed25519 over "
                          "the 32-byte hash")
    got = await mark(kit, stream.epoch)
    expect(got == 1, f"a correctly signed event was not stored (mark {got}): the signature "
                     f"is Ed25519 over the 32-byte hash")


@check("P-ACK-1", "one ack per frame, in order, cumulative; the next welcome names the mark",
       needs=("P-HELLO-1", "P-VERIFY-1"))
async def _acks(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        for _ in range(3):
            await conn.send(proto.Events(tuple(stream.next(2))))
        acks = [await conn.ack() for _ in range(3)]
    expect(acks == [2, 4, 6], f"acks {acks} for frames ending at 2, 4, 6")
    got = await mark(kit, stream.epoch)
    expect(got == 6, f"after acks up to 6 the next welcome said {got}")


@check("P-AUTH-3", "a token of another gateway: close 4001", needs=("P-HELLO-1",))
async def _other_gateway(kit: Kit) -> None:
    stream = kit.stream(gateway_id=kit.settings.other_gateway_id)
    async with kit.connect() as conn:  # our token, the other gateway's id
        await conn.send(proto.Hello(stream.gateway_id, stream.epoch, (kit.signer.kid,)))
        await expect_close(conn.until_closed, proto.CLOSE_AUTH)


@check("P-HELLO-2", "a first frame that is not a valid hello (another type, a text frame, an "
                   "epoch not 16 lowercase hex): close 4002")
async def _not_hello(kit: Kit) -> None:
    async with kit.connect() as conn:
        await conn.send(proto.Ack(kit.new_epoch(), 0))
        await expect_close(conn.until_closed, proto.CLOSE_PROTOCOL)
    async with kit.connect() as conn:
        await conn.send_raw("hello")  # a text frame
        await expect_close(conn.until_closed, proto.CLOSE_PROTOCOL)
    for epoch in ("attack-epoch", kit.new_epoch().upper(), kit.new_epoch()[:15] + ".>"):
        async with kit.connect() as conn:
            await conn.send(proto.Hello(kit.settings.gateway_id, epoch, (kit.signer.kid,)))
            await expect_close(conn.until_closed, proto.CLOSE_PROTOCOL)


@check("P-HELLO-3", "an unknown kid in the hello is no refusal", needs=("P-HELLO-1",))
async def _unknown_kid_in_hello(kit: Kit) -> None:
    stranger = Signer(nacl.signing.SigningKey.generate())
    try:
        async with kit.session(kit.stream(), kids=(kit.signer.kid, stranger.kid)):
            pass
    except Closed as closed:
        raise Failed(f"hello listing an unregistered kid was refused ({closed.code})") from None


@check("P-EPOCH-1", "a new epoch is its own stream from seq 1", needs=BASIC)
async def _epochs(kit: Kit) -> None:
    first = kit.stream()
    async with kit.session(first) as (conn, _):
        await conn.send(proto.Events(tuple(first.next(3))))
        await conn.ack()
    second = kit.stream()
    async with kit.session(second) as (conn, welcome):
        expect(welcome.high_water == 0, f"a new epoch was welcomed at {welcome.high_water}")
        await conn.send(proto.Events(tuple(second.next(1))))
        seq = await acked(conn, "seq 1 of a second epoch was refused")
        expect(seq == 1, f"ack {seq}")


FULL = (*BASIC, "P-EPOCH-1")


# -- frames and per-event rules ---------------------------------------------------------------

@check("P-FRAME-1", "text, non-msgpack and unknown-type frames: close 4002", needs=FULL)
async def _bad_frames(kit: Kit) -> None:
    for bad in ("text frame", b"\xc1\xc1", proto.Error(0, "")):
        async with kit.session(kit.stream()) as (conn, _):
            if isinstance(bad, proto.Error):
                await conn.send_raw(proto.encode(bad).replace(b"error", b"bogus"))
            else:
                await conn.send_raw(bad)
            await expect_close(conn.until_closed, proto.CLOSE_PROTOCOL)


@check("P-FRAME-2", "unknown keys are ignored", needs=FULL)
async def _unknown_keys(kit: Kit) -> None:
    import msgpack

    stream = kit.stream()
    async with kit.connect() as conn:
        await conn.send_raw(msgpack.packb({
            "type": "hello", "proto": 1, "gateway_id": stream.gateway_id, "epoch": stream.epoch,
            "kids": [kit.signer.kid], "x_future": {"a": 1}}, use_bin_type=True))
        welcome = await conn.next()
        expect(isinstance(welcome, proto.Welcome), f"hello with an extra key got {welcome!r}")
        await conn.send_raw(msgpack.packb({"type": "events", "events": stream.next(1),
                                           "x_future": True}, use_bin_type=True))
        expect(await conn.ack() == 1, "events frame with an extra key not acked")


@check("P-DUP-1", "duplicates are acked, not refused", needs=FULL)
async def _duplicates(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        events = stream.next(3)
        await conn.send(proto.Events(tuple(events)))
        await conn.ack()
        await conn.send(proto.Events(tuple(events[1:] + stream.next(1))))
        seq = await acked(conn, "a frame with duplicates was refused")
        expect(seq == 4, f"ack {seq} after duplicates 2-3 and new 4")


@check("P-GAP-1", "a gap is stored and acked", needs=FULL)
async def _gap(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        await conn.send(proto.Events(tuple(stream.next(1))))
        await conn.ack()
        stream.skip(2)  # seq 2-3 never exist; seq 4 links to seq 1
        await conn.send(proto.Events(tuple(stream.next(1))))
        seq = await acked(conn, "an authentic event after a gap was refused")
        expect(seq == 4, f"ack {seq} for seq 4 after a gap")


@check("P-LINK-1", "an authentic event with a broken link is stored", needs=FULL)
async def _link(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        await conn.send(proto.Events(tuple(stream.next(1))))
        await conn.ack()
        await conn.send(proto.Events((stream.faulty("wrong-link"),)))
        seq = await acked(conn, "an authentic event with a wrong prev_hash was refused")
        expect(seq == 2, f"ack {seq}")


async def _refused(kit: Kit, fault: str, code: int) -> None:
    """A good event then a faulty one: close `code`, and the faulty one is not stored."""
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        await conn.send(proto.Events((*stream.next(1), stream.faulty(fault))))
        await expect_close(conn.until_closed, code)
    got = await mark(kit, stream.epoch)
    expect(got <= 1, f"after a {fault} event the mark is {got}: it was stored")


@check("P-VERIFY-2", "bad hash or bad signature: close 4003, not stored", needs=FULL)
async def _bad_integrity(kit: Kit) -> None:
    for fault in ("tampered", "bad-sig", "body-signed"):
        await _refused(kit, fault, proto.CLOSE_INTEGRITY)


@check("P-VERIFY-3", "an unknown kid: close 4003, not stored", needs=FULL)
async def _unknown_kid(kit: Kit) -> None:
    await _refused(kit, "unknown-kid", proto.CLOSE_INTEGRITY)


@check("P-STREAM-1", "an event of another stream: close 4002, not stored", needs=FULL)
async def _foreign(kit: Kit) -> None:
    await _refused(kit, "foreign-gateway", proto.CLOSE_PROTOCOL)


@check("P-REFUSE-1", "before a refusal the good prefix is committed and acked", needs=FULL)
async def _prefix(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        await conn.send(proto.Events(tuple(stream.next(2))))
        await conn.ack()
        await conn.send(proto.Events((*stream.next(2), stream.faulty("bad-sig"))))
        closed = await conn.until_closed()
        acks = [m.seq for m in conn.received if isinstance(m, proto.Ack)]
        order = [type(m).__name__ for m in conn.received
                 if isinstance(m, proto.Ack | proto.Error)]
    expect(acks == [2, 4], f"acks {acks}: expected 2, then 4 for the good prefix")
    expect(order.index("Ack", 1) < (order.index("Error") if "Error" in order else len(order)),
           f"the prefix's ack came after the error ({order})")
    expect(closed.code is not None, "no close")
    got = await mark(kit, stream.epoch)
    expect(got == 4, f"the committed prefix ends at {got}, not 4")


@check("P-SCHEMA-1", "authentic events failing their schema, or of unknown types, are stored",
       needs=FULL)
async def _schema(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        events = stream.next(1, "betPlaced", {"wager": "ten dollars"})
        events += stream.next(1, "kitFutureEvent", {"anything": [1, 2]})
        await conn.send(proto.Events(tuple(events)))
        seq = await acked(conn, "authentic events were refused for their content")
        expect(seq == 2, f"ack {seq}")


@check("P-HOLE-1", "a hole in the middle is stored, then closed by a later lossMarker",
       needs=(*FULL, "P-GAP-1", "P-SCHEMA-1"))
async def _hole(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        await conn.send(proto.Events(tuple(stream.next(1))))
        await conn.ack()
        stream.skip(1)  # seq 2 was damaged at the gateway and quarantined
        after = stream.next(1)
        await conn.send(proto.Events(tuple(after)))
        seq = await acked(conn, "an authentic event after a hole was refused")
        expect(seq == 3, f"ack {seq} for seq 3 after a hole")
        marker = stream.next(1, "lossMarker", {
            "reason": "quarantine", "count": 1, "first_seq": 2, "last_seq": 2,
            "resume_hash": decode_envelope(after[0])["prev_hash"].hex()})
        await conn.send(proto.Events(tuple(marker)))
        seq = await acked(conn, "the lossMarker closing a hole was refused")
        expect(seq == 4, f"ack {seq} for the lossMarker")


@check("P-EPOCH-2", "a rollback's new epoch, opened by its lossMarker (or by epochStarted when "
       "nothing is missing), is accepted", needs=(*FULL, "P-SCHEMA-1"))
async def _rollback(kit: Kit) -> None:
    first = kit.stream()
    async with kit.session(first) as (conn, _):
        await conn.send(proto.Events(tuple(first.next(3))))
        await conn.ack()
    second = kit.stream()
    async with kit.session(second) as (conn, welcome):
        expect(welcome.high_water == 0, f"the new epoch was welcomed at {welcome.high_water}")
        await conn.send(proto.Events(tuple(second.next(1, "lossMarker", {
            "reason": "rollback", "previous_epoch": first.epoch, "first_seq": 2, "last_seq": 3,
            "count": 2, "salvaged": 0}))))
        seq = await acked(conn, "the new epoch's rollback lossMarker was refused")
        expect(seq == 1, f"ack {seq}")
    third = kit.stream()
    async with kit.session(third) as (conn, welcome):
        expect(welcome.high_water == 0, f"the new epoch was welcomed at {welcome.high_water}")
        await conn.send(proto.Events(tuple(third.next(1, "epochStarted", {
            "reason": "database-corrupt", "previous_epoch": second.epoch, "salvaged": 0}))))
        seq = await acked(conn, "a new epoch opened by epochStarted (nothing missing) was refused")
        expect(seq == 1, f"ack {seq}")


@check("P-ROTATE-1", "keyRotated makes the new key valid, durably", needs=FULL)
async def _rotation(kit: Kit) -> None:
    new = Signer(nacl.signing.SigningKey.generate())
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        events = stream.next(1)
        events += stream.next(1, "keyRotated", {"new_kid": new.kid,
                                                "new_public_key": bytes(new.verify_key).hex()})
        events += stream.next(1, signer=new)
        await conn.send(proto.Events(tuple(events)))
        expect(await acked(conn, "an event signed by the announced key was refused") == 3,
               "the rotation frame was not acked to 3")
    async with kit.session(stream, kids=(new.kid,)) as (conn, _):
        await conn.send(proto.Events(tuple(stream.next(1, signer=new))))
        expect(await acked(conn, "the learnt key was forgotten on reconnect") == 4,
               "not acked after reconnecting")


@check("P-SIZE-1", "a frame of 1,000 events", needs=FULL)
async def _big_frame(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        await conn.send(proto.Events(tuple(stream.next(1000))))
        seq = await acked(conn, "a 1,000-event frame was refused")
        expect(seq == 1000, f"ack {seq}")


@check("P-TAKEOVER-1", "a newer connection takes over: the older gets 4004", needs=FULL)
async def _takeover(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (old, _):
        await old.send(proto.Events(tuple(stream.next(2))))
        await old.ack()
        async with kit.session(stream) as (_, welcome):
            expect(welcome.high_water == 2, f"the newer connection was welcomed at "
                                            f"{welcome.high_water}, not 2")
            await expect_close(old.until_closed, proto.CLOSE_SUPERSEDED)


# -- commands -----------------------------------------------------------------------------------

@check("P-CMD-3", "a result for an unknown command id is no close", needs=FULL)
async def _unknown_result(kit: Kit) -> None:
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        await conn.send(proto.CommandResult("kit-unknown-" + stream.epoch, "ok", "", {}))
        await conn.send(proto.Events(tuple(stream.next(1))))
        expect(await acked(conn, "closed after a result for an unknown id") == 1,
               "no ack after the result")


def _commands_seen(kit: Kit) -> list[tuple[proto.Command, bool]]:
    """Every command the platform sent in this run, with whether welcome came first."""
    seen = []
    for conn in kit.conns:
        kinds = [type(m).__name__ for m in conn.received]
        for message in conn.received:
            if isinstance(message, proto.Command):
                after = "Welcome" in kinds and kinds.index("Welcome") < conn.received.index(message)
                seen.append((message, after))
    return seen


async def _next_command(kit: Kit) -> proto.Command:
    async with kit.session(kit.stream()) as (conn, _):
        try:
            while not conn.commands:
                await conn.next(keep_commands=True)
        except TimedOut:
            raise Failed("no command arrived after welcome (one was to be pending)") from None
        return conn.commands[0]
    raise AssertionError("unreachable")


@check("P-CMD-1", "a pending command arrives after welcome, well-formed", needs_command=True)
async def _command(kit: Kit) -> None:
    """Runs first of all sessions: the kit reads every frame of this one, so a platform that
    sends a command once (and wrongly never again) fails P-CMD-2, not this rule."""
    try:
        await _next_command(kit)
    except (Closed, TimedOut) as err:
        if not any(isinstance(m, proto.Welcome) for c in kit.conns for m in c.received):
            raise Blocked("no welcome (P-HELLO-1)") from None
        raise Failed(str(err)) from None
    for message, after_welcome in _commands_seen(kit):
        expect(after_welcome, f"command {message.id!r} came before welcome")
        expect(1 <= len(message.id) <= 128, f"command id {message.id!r}")
        expect(isinstance(message.name, str), f"command name {message.name!r}")
        expect(message.target is None or isinstance(message.target, dict),
               f"target {message.target!r}")
        expect(message.args is None or isinstance(message.args, dict),
               f"args {message.args!r}")


@check("P-CMD-2", "an unanswered command is sent again on the next connection",
       needs=("P-CMD-1",), needs_command=True)
async def _command_again(kit: Kit) -> None:
    first = _commands_seen(kit)[0][0]
    stream = kit.stream()
    async with kit.session(stream) as (conn, _):
        try:
            while not conn.commands:
                await conn.next(keep_commands=True)
        except TimedOut:
            raise Failed(f"command {first.id!r} was not sent again on a new connection"
                         ) from None
        expect(conn.commands[0].id == first.id,
               f"after reconnecting got {conn.commands[0].id!r}, not {first.id!r}")
        await conn.send(proto.command_result(first.id, "rejected",
                                             "conformance kit: not executed"))


# Commands first: the first sessions of a run are the ones a pending command arrives on.
RUN_ORDER = ["P-TRANSPORT-1", "P-AUTH-1", "P-AUTH-2", "P-CMD-1", "P-CMD-2"]
CHECKS.sort(key=lambda c: RUN_ORDER.index(c.rule) if c.rule in RUN_ORDER else len(RUN_ORDER))
