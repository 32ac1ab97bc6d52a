"""`diag probe` for SAS: with the gateway stopped, sync, LP 1F, 54, 1A and two meters on one
port, with timings and what a failure usually means (the protocol's `DriverSpec.probe`).

Safe on a line the gateway polls: a device locked by a running gateway is never opened; with the
port's poll journal the first frame repeats the line's last journaled one (an implied NACK), and
the probe stops, acknowledging nothing, at the first answer that may be unrecorded.
"""

from __future__ import annotations

import termios
from pathlib import Path
from typing import Any

import trio

from drivers.link import LinkBrokenError, SasLink, TxFrame, open_link
from drivers.link.advice import adapter_facts, open_advice
from drivers.link.lock import DeviceBusyError
from drivers.registry import ProbeReport, ProbeRequest
from drivers.sas import framing, messages
from drivers.sas.codes import LongPoll
from drivers.sas.errors import SasRemoteProtocolError
from drivers.sas.journal import PollJournal

__all__ = ["MAX_ANSWER_S", "probe", "probe_request"]

# The longest SAS answer (a length byte of 255, about 260 bytes) takes 0.15 s at 19200 baud with
# the wakeup bit; with a USB adapter's latency timer and margin, no answer still arrives this
# long after the poll's own timeout. A line that keeps sending (endless 0xFF, a flood) gets no
# more: each chunk pushes the inter-byte deadline on only up to this ceiling.
MAX_ANSWER_S = 0.5

# (what, long poll); the meters last, as machines need not support them. Answer lengths and
# decoding are messages.py's (POLL_SPECS, decode_answer).
_PROBES: list[tuple[str, int]] = [
    ("game configuration", LongPoll.GAME_CONFIGURATION),
    ("SAS version and serial", LongPoll.VERSION_AND_SERIAL),
    ("current credits", LongPoll.CURRENT_CREDITS),
    ("meter: total coin in", LongPoll.COIN_IN),
    ("meter: games played", LongPoll.GAMES_PLAYED),
]


def _shape(command: int) -> dict[str, Any]:
    """The answer's length as framing wants it, from messages.POLL_SPECS."""
    answer = messages.POLL_SPECS[command].answer
    return {"length": answer if isinstance(answer, int) else None,
            "length_byte": answer == "length"}


def _decode(command: int, frame: bytes, address: int) -> dict[str, Any]:
    """What the report shows of an answer (messages.decode_answer does the decoding)."""
    match messages.decode_answer(command, frame, address):
        case messages.GameConfig() as game:
            return {"game_id": game.game_id, "denomination_code": game.denomination_code,
                    "max_bet": game.max_bet, "paytable": game.paytable_id}
        case messages.VersionInfo(sas_version=version, serial=serial):
            return {"sas_version": version, "serial": serial}
        case messages.MeterReading(LongPoll.CURRENT_CREDITS, meters):
            return {"credits": meters["current_credits"]}
        case messages.MeterReading(_, meters) if len(meters) == 1:
            return {"meter": next(iter(meters.values()))}
        case other:
            return {"answer": repr(other)}


def _expectation(wire: bytes) -> framing.Expectation:
    """What may answer `wire`: a GP either way (an exception byte or an RTE event)."""
    address = wire[0] & 0x7F
    if len(wire) == 1:
        return framing.Expectation(address, None, rte=True)
    spec = messages.POLL_SPECS.get(wire[1])
    answer = spec.answer if spec is not None else "ack"
    return framing.Expectation(address, wire[1], True,
                               length=answer if isinstance(answer, int) else None,
                               length_byte=answer == "length")


class _ProbeLine:
    """The probe's side of the line: every frame is journaled before it is written (as the
    driver does, so the gateway's restart probe repeats the probe's last poll), and polls to
    one machine keep `spacing_s` apart (reference 2.1)."""

    def __init__(self, link: SasLink, journal: PollJournal | None, spacing_s: float) -> None:
        self.link, self.journal, self.spacing_s = link, journal, spacing_s
        self._last: dict[int, float] = {}

    async def exchange(self, wire: bytes, expect: framing.Expectation, timeout_s: float,
                       ) -> tuple[framing.Answer | None, float, int]:
        """Send one poll; return (answer or None, seconds until it was complete, bytes seen)."""
        address = wire[0] & 0x7F
        if address in self._last:
            await trio.sleep_until(self._last[address] + self.spacing_s)
        framer = framing.Framer()
        if self.journal is not None:
            self.journal.record(wire)
        await self.link.send(TxFrame(wire))
        sent = self._last[address] = trio.current_time()
        deadline = sent + timeout_s
        ceiling = deadline + MAX_ANSWER_S
        seen = 0
        while True:
            with trio.move_on_at(deadline):
                data = await self.link.receive_some()
                seen += len(data)
                framer.feed(data)
                answer = framer.next_answer(expect)
                if answer is not None:
                    return answer, trio.current_time() - sent, seen
                # Inter-byte gap: the rest of the frame, but never past the ceiling.
                deadline = min(trio.current_time() + 0.02, ceiling)
                continue
            answer = framer.next_answer(expect, quiet=True)
            return answer, trio.current_time() - sent, seen


def _pending(answer: framing.Answer | None, seen: int) -> str | None:
    """Why an answer may hold something unrecorded (None: nothing to lose by moving on)."""
    match answer:
        case framing.ExceptionByte(code) if code != 0:
            return f"exception {code:02X} ({messages.exception_name(code)})"
        case framing.Event(code, _):
            return f"event {code:02X} ({messages.exception_name(code)})"
        case framing.Corrupt() | framing.Busy():
            return "an answer that could not be read"
        case None if seen:
            return f"{seen} bytes that make no answer"
    return None


async def probe(device: str, address: int, *, mode: str = "auto", timeout_s: float = 0.2,
                journal: PollJournal | None = None, spacing_s: float = 0.2,
                lock_dir: Path | None = None) -> dict[str, Any]:
    """Probe one machine; never raises for what the line or the machine does. With `journal`
    (the port's poll journal) the first frame repeats the line's last journaled frame, and
    the probe stops, acknowledging nothing, at the first answer that may be unrecorded."""
    report: dict[str, Any] = {"device": device, "address": address, "steps": [], "advice": [],
                              "ok": False}
    started = trio.current_time()
    try:
        link = await open_link(device, mode=mode, lock_dir=lock_dir)
    except DeviceBusyError as err:
        report["error"] = str(err)
        report["busy"] = True
        report["advice"].append("a gateway (or another program) polls this port: stop it first "
                                "(systemctl stop casino-gateway); a probe never shares a line")
        return report
    except LinkBrokenError as err:
        report["error"] = str(err)
        report["advice"].append(open_advice(err.__cause__, device))
        return report
    except termios.error as err:  # tcgetattr on something that is not a terminal
        report["error"] = f"cannot configure {device}: {err}"
        report["advice"].append(f"{device} is not a serial port")
        return report
    report["opened_ms"] = round((trio.current_time() - started) * 1000, 2)
    adapter_facts(report, device)
    async with link:
        line = _ProbeLine(link, journal, spacing_s)
        try:
            if not await _resume(line, report, journal, timeout_s):
                return report
            # A machine ignores polls to itself until it sees one to another address
            # (reference 2.3). Address 127 (126 when probing 127) is rarely given to a machine.
            sync = 127 if address != 127 else 126
            _, _, seen = await line.exchange(messages.general_poll(sync).wire(),
                                             framing.Expectation(sync), timeout_s)
            if seen:
                report["advice"].append(
                    f"bytes answered a poll to address {sync}: another machine on this line "
                    "uses it, or something else is polling this port")
            for label, command in _PROBES:
                step = await _probe_step(line, address, label, command, timeout_s)
                report["steps"].append(step)
                if step.get("unreadable"):
                    report["advice"].append(
                        "the last answer could not be read: it may have been an event, so the "
                        "probe stopped rather than acknowledge it with another poll")
                    break
                if step.get("event") is not None:
                    report["advice"].append(
                        "the machine answered with an event: the probe stopped there and left "
                        "it unacknowledged (nothing was sent after it; the gateway's first "
                        "poll repeats the probe's last one, an implied NACK, and collects it). "
                        "Start the gateway.")
                    break
        except LinkBrokenError as err:
            report["error"] = f"link broke: {err}"
    _advise(report)
    return report


async def _resume(line: _ProbeLine, report: dict[str, Any], journal: PollJournal | None,
                  timeout_s: float) -> bool:
    """Open with the line's last journaled frame (an implied NACK to whoever got it). False
    (stop) if the answer may hold something the gateway never recorded."""
    if journal is None:
        return True
    entries = journal.entries()
    if not entries:
        return True
    last_address = max(entries, key=lambda a: entries[a][0])
    wire = entries[last_address][1]
    if not wire:
        return True
    answer, _, seen = await line.exchange(wire, _expectation(wire), timeout_s)
    report["resumed_from"] = wire.hex()
    why = _pending(answer, seen)
    if why is None:
        return True
    report["pending"] = {"address": last_address, "answer": why}
    report["advice"].append(
        f"address {last_address} answered the gateway's last poll again with {why}: it may "
        "not be recorded yet, so the probe stopped without acknowledging it. Start the "
        "gateway to collect it, then stop it and probe again.")
    return False


async def _probe_step(line: _ProbeLine, address: int, label: str, command: int,
                      timeout_s: float) -> dict[str, Any]:
    wire = messages.long_poll(address, command).wire()
    expect = framing.Expectation(address, command, **_shape(command))
    step: dict[str, Any] = {"poll": f"LP {command:02X}", "what": label, "ok": False}
    for attempt in (1, 2):
        answer, took, seen = await line.exchange(wire, expect, timeout_s)
        step["attempts"] = attempt
        step["latency_ms"] = round(took * 1000, 2)
        match answer:
            case framing.Data(frame):
                try:
                    step["data"] = _decode(command, frame, address)
                except SasRemoteProtocolError as err:
                    step["result"] = f"undecodable answer: {err}"
                    return step
                step["ok"], step["result"] = True, "answered"
                return step
            case framing.Event(code) | framing.ExceptionByte(code):
                step["event"] = code
                step["result"] = f"answered with event {code:02X} ({messages.exception_name(code)})"
                return step
            case framing.Busy():
                step["result"] = "busy"
                continue
            case framing.Nack():
                step["result"] = "NACK (the machine rejected the poll)"
                return step
            case framing.Corrupt():
                step["result"] = "CRC error"
                step["crc_error"] = True
                continue
            case framing.Ack():
                step["ok"], step["result"] = True, "ACK"
                return step
            case None:
                step["result"] = ("no answer" if seen == 0
                                  else f"{seen} bytes that make no answer (garbage)")
                step["silent"] = seen == 0
                step["garbage"] = seen > 0
                # An identical second poll is an implied NACK: the machine resends.
                continue
    # Still unreadable after the implied NACK: any other poll would acknowledge it.
    step["unreadable"] = bool(step.get("crc_error") or step.get("garbage"))
    return step


def _advise(report: dict[str, Any]) -> None:
    steps = report["steps"]
    core = [s for s in steps if not s["what"].startswith("meter")]
    answered = [s for s in steps if s["ok"]]
    report["ok"] = any(s["ok"] for s in core)
    if not answered and all(s.get("silent") for s in steps):
        report["advice"].append(
            f"no answer from address {report['address']}: check the cabling (TX/RX, ground), "
            "the machine's SAS address and that SAS is enabled on this port, and that the serial "
            "adapter supports mark/space parity (the wakeup bit; many USB adapters do not)")
    if any(s.get("crc_error") or s.get("garbage") for s in steps):
        report["advice"].append(
            "CRC errors or garbage: electrical noise, a bad cable or a baud/parity mismatch "
            "(SAS is 19200 baud, 8 data bits, wakeup bit as parity); check shielding and length")
    if any(s["result"].startswith("NACK") for s in steps):
        report["advice"].append("the machine NACKs polls: check the SAS address and that no "
                                "other host polls this line")
    missing = [s["what"] for s in core if not s["ok"] and not s.get("event")]
    if answered and missing:
        report["advice"].append("not answered: " + ", ".join(missing))
    meters = [s for s in steps if s["what"].startswith("meter")]
    if answered and meters and not any(s["ok"] for s in meters):
        report["advice"].append("meter long polls unanswered: the machine may not support them "
                                "(not a fault)")


async def probe_request(request: ProbeRequest) -> ProbeReport:
    """`DriverSpec.probe`: `probe` with the registry's neutral arguments."""
    journal = request.journal
    if journal is not None and not isinstance(journal, PollJournal):
        raise TypeError(f"a SAS probe needs the port's PollJournal, not {journal!r}")
    return await probe(request.device, request.address, mode=request.link,
                       timeout_s=request.timeout_s, journal=journal,
                       spacing_s=request.spacing_s, lock_dir=request.lock_dir)
