"""The reconciler: at each meter read, do the events recorded since the last read add up to the
meters' movement? Sans-I/O: `observe(Observation)` in, `Verdict`s out (no clock, no trio).

A window runs from one `meterSnapshot` of a machine to its next. For every meter with a rule
(meters.py) the window's events give an interval [lo, hi]; the meter's delta must lie in it.
Events still queued in the machine across a read: the driver says how many of the exceptions
recorded just before the snapshot were answered after the meters were read (`straddle`); each
may or may not be in the meters, so they widen the interval, and what the meters did not yet
count is carried into the next window (`carry`). A meter reported backwards is a rollover when
it was in the upper half of its width and the wrapped delta is small; otherwise a reset.
Every window ends in one `meterReconciled`, or one `meterDiscrepancy` per meter that did not
add up, with a cause from `Cause` backed by the seqs of the events that show it. Gaming days:
the first read of a new day closes the previous one (`gamingDayClosed`); a window belongs to the
day its closing read falls in.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.reconcile.meters import RULES, Interval, contributions

__all__ = ["Cause", "MachineReconciler", "Observation", "Reconciler", "Verdict"]


class Cause(enum.StrEnum):
    """Why a meter did not add up. The four with an event type in _EVIDENCE are chosen only
    when such an event is in the window; the others may cite none (docs/reconciliation.md)."""

    EVENTS_MISSING = "eventsMissing"        # the meter moved more than the events say
    EVENTS_EXTRA = "eventsExtra"            # events the meter never counted
    RESET_AT_POWER_UP = "meterResetAtPowerUp"  # went backwards; powerApplied in the window
    METER_RESET = "meterReset"              # went backwards, no power-up (evidence: exc 7A if any)
    ROLLOVER = "rollover"                   # wrapped past its width and still did not add up
    BUFFER_OVERFLOW = "bufferOverflow"      # exception 70: the machine dropped queued events
    LOSS_MARKER = "lossMarker"              # the line gave up an undecodable answer
    IDENTITY_CHANGE = "identityChange"      # another machine (or game) behind the address


@dataclass(frozen=True, slots=True)
class Observation:
    """One recorded event of one machine. `key` identifies the machine for good (port/address:
    its serial is unknown while it is offline); `machine` is passed through to the verdicts.
    `exception`: it came from the machine's exception queue (what `straddle` counts); `seq`: its
    place in the outbox, the evidence a verdict cites; `at`: wall-clock UTC seconds."""

    key: str
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    exception: bool = False
    seq: int | None = None
    at: float = 0.0
    machine: Hashable = None


@dataclass(frozen=True, slots=True)
class Verdict:
    type: str  # meterReconciled | meterDiscrepancy | gamingDayClosed
    key: str
    machine: Hashable
    data: dict[str, Any]


_EVIDENCE = {"powerApplied": Cause.RESET_AT_POWER_UP, "bufferOverflow": Cause.BUFFER_OVERFLOW,
             "lossMarker": Cause.LOSS_MARKER, "machineReplaced": Cause.IDENTITY_CHANGE}
_MAX_CITED = 50  # seqs a discrepancy cites as the events behind a meter (the window has them all)
_SOFT_RESET = 0x7A  # exception 7A: soft (lifetime) meters reset to zero


def _add(a: Interval, b: Interval) -> Interval:
    return a[0] + b[0], None if a[1] is None or b[1] is None else a[1] + b[1]


def _sum(events: list[Observation], meter: str, denom: int) -> Interval:
    total: Interval = (0, 0)
    for e in events:
        part = contributions(e.type, e.data, denom).get(meter)
        if part is not None:
            total = _add(total, part)
    return total


@dataclass(slots=True)
class _Day:
    label: str
    windows: int = 0
    discrepancies: int = 0
    totals: Counter[str] = field(default_factory=Counter)


class MachineReconciler:
    """One machine's windows."""

    def __init__(self, key: str, day_start_s: float) -> None:
        self.key = key
        self.day_start_s = day_start_s
        self.baseline: dict[str, int] | None = None
        self.carry: dict[str, Interval] = {}
        self.events: list[Observation] = []
        self.digits: dict[str, int] = {}
        self.day: _Day | None = None
        self.last_seq: int | None = None
        self.reset_seen = False

    def observe(self, obs: Observation) -> list[Verdict]:
        if obs.type != "meterSnapshot":
            self.events.append(obs)
            return []
        out = self._roll_day(obs)
        out += self._window(obs)
        self.events = []
        self.last_seq = obs.seq
        return out

    def _label(self, at: float) -> str:
        return dt.datetime.fromtimestamp(at - self.day_start_s, tz=dt.UTC).date().isoformat()

    def _roll_day(self, obs: Observation) -> list[Verdict]:
        label = self._label(obs.at)
        if self.day is None:
            self.day = _Day(label)
            return []
        if label == self.day.label:
            return []
        out = [self.close_day(obs.machine)]
        self.day = _Day(label)
        return out

    def close_day(self, machine: Hashable) -> Verdict:
        """The signed day close: totals of the meters' movement over the day's windows."""
        day = self.day or _Day("")
        return Verdict("gamingDayClosed", self.key, machine, {
            "gaming_day": day.label, "windows": day.windows,
            "reconciled": day.windows - day.discrepancies, "discrepancies": day.discrepancies,
            "totals": dict(sorted(day.totals.items())),
            "meters": dict(sorted((self.baseline or {}).items()))})

    def _read(self, obs: Observation) -> tuple[dict[str, int], int, int, list[Any], list[Any]]:
        """A meter read's (meters, denomination in cents, straddle, events before the read,
        events the machine answered after it: the last `straddle` exceptions)."""
        meters = {k: int(v) for k, v in obs.data.get("meters", {}).items()}
        self.digits.update({k: int(v) for k, v in obs.data.get("digits", {}).items()})
        denom = int(obs.data.get("denomination_cents") or 1)
        straddle = int(obs.data.get("straddle", 0))
        exceptions = [e for e in self.events if e.exception]
        late = exceptions[len(exceptions) - straddle:] if straddle else []
        late_ids = {id(e) for e in late}
        early = [e for e in self.events if id(e) not in late_ids]
        return meters, denom, straddle, early, late

    def _window(self, obs: Observation) -> list[Verdict]:
        meters, denom, straddle, early, late = self._read(obs)
        if self.baseline is None:
            self.baseline = meters
            self.carry = {m: (0, _sum(late, m, denom)[1]) for m in RULES}
            return []
        span = {"from_seq": self.last_seq, "to_seq": obs.seq,
                "events": dict(Counter(e.type for e in self.events if e.exception))}
        found: list[Verdict] = []
        deltas: dict[str, int] = {}
        rolled: list[str] = []
        # A machine that resets its meters resets them all: one meter seen going backwards
        # explains a mismatch of any other (that happened to stay above its old value).
        self.reset_seen = any(self._went_back(m, self.baseline[m], meters[m])
                              for m in RULES if m in meters and m in self.baseline)
        for meter, rule in RULES.items():
            pre = _add(self.carry.get(meter, (0, 0)), _sum(early, meter, denom))
            s = _sum(late, meter, denom)
            if meter not in meters:
                # Not in this read (a poll of it failed, or the machine does not keep it): its
                # window runs on to the next read that has it, with all these events pending.
                if meter in self.baseline:
                    self.carry[meter] = _add(pre, s)
                continue
            if meter not in self.baseline:
                self.carry[meter] = (0, s[1])  # first seen: like the very first read
                continue
            old, new = self.baseline[meter], meters[meter]
            width = self._width(meter, old, new)
            if new >= old:
                delta, wrapped = new - old, False
            elif not self._went_back(meter, old, new):
                delta, wrapped = new + width - old, True
                rolled.append(meter)
            else:
                found.append(self._reset(obs, meter, rule.source, pre, old, new, span))
                self.carry[meter] = (0, s[1])
                continue
            lo, hi = pre[0], None if pre[1] is None or s[1] is None else pre[1] + s[1]
            if not rule.exact:
                hi = None
            deltas[meter] = delta
            if (delta < lo or (hi is not None and delta > hi)) and self.reset_seen:
                found.append(self._reset(obs, meter, rule.source, pre, old, new, span))
                self.carry[meter] = (0, s[1])
                continue
            if delta < lo or (hi is not None and delta > hi):
                found.append(self._mismatch(obs, meter, rule.source, (lo, hi), delta, wrapped,
                                            span))
                self.carry[meter] = s if delta < lo else (0, 0)
                continue
            # Only the straddling events can still be counted later, and at most what they are
            # worth: an unbounded event before the read (a handpay's jackpot) is spent here.
            carry_hi = s[1] if hi is None or s[1] is None else min(hi - delta, s[1])
            self.carry[meter] = (max(0, pre[0] + s[0] - delta), carry_hi)
        self.baseline = {**self.baseline, **meters}
        return self._close(obs, meters, span, found, deltas, rolled, straddle)

    def _close(self, obs: Observation, meters: dict[str, int], span: dict[str, Any],
               found: list[Verdict], deltas: dict[str, int], rolled: list[str],
               straddle: int) -> list[Verdict]:
        """The window's end: the day's totals, then its discrepancies or one meterReconciled."""
        assert self.day is not None
        self.day.windows += 1
        self.day.totals.update(deltas)
        if found:
            self.day.discrepancies += 1
            return found
        unreported = sorted(m for m in RULES if m not in meters)
        return [Verdict("meterReconciled", self.key, obs.machine, {
            **span, "deltas": deltas, "straddle": straddle, "unreported": unreported,
            "rolled_over": rolled})]

    def _width(self, meter: str, old: int, new: int) -> int:
        return 10 ** max(self.digits.get(meter, 8), len(str(max(old, new))))

    def _went_back(self, meter: str, old: int, new: int) -> bool:
        """Backwards and not a rollover (which needs the old value in the upper half of the
        meter's width and a small wrapped delta)."""
        width = self._width(meter, old, new)
        return new < old and not (old >= width // 2 and new + width - old < width // 2)

    def _evidence(self, cause: Cause) -> list[int]:
        return [e.seq for e in self.events if e.seq is not None and _EVIDENCE.get(e.type) == cause]

    def _reset(self, obs: Observation, meter: str, source: str, pre: Interval, old: int,
               new: int, span: dict[str, Any]) -> Verdict:
        cause = Cause.RESET_AT_POWER_UP if self._evidence(Cause.RESET_AT_POWER_UP) \
            else Cause.METER_RESET
        evidence = self._evidence(cause) if cause == Cause.RESET_AT_POWER_UP else [
            e.seq for e in self.events if e.seq is not None and e.type == "machineException"
            and e.data.get("code") == _SOFT_RESET]
        return Verdict("meterDiscrepancy", self.key, obs.machine, {
            "meter": meter, "expected_min": pre[0], "expected_max": pre[1], "seen": new,
            "previous": old, "difference": new - old, "cause": str(cause), "evidence": evidence,
            "rule": source, **span})

    def _mismatch(self, obs: Observation, meter: str, source: str, expected: Interval,
                  delta: int, wrapped: bool, span: dict[str, Any]) -> Verdict:
        lo, hi = expected
        missing = hi is not None and delta > hi
        difference = delta - hi if missing and hi is not None else delta - lo
        order = ([Cause.IDENTITY_CHANGE, Cause.BUFFER_OVERFLOW, Cause.LOSS_MARKER] if missing
                 else [Cause.IDENTITY_CHANGE])
        cause = next((c for c in order if self._evidence(c)), None)
        if cause is None:
            cause = Cause.ROLLOVER if wrapped else (
                Cause.EVENTS_MISSING if missing else Cause.EVENTS_EXTRA)
        evidence = self._evidence(cause) if cause in _EVIDENCE.values() else [
            e.seq for e in self.events if e.seq is not None
            and meter in contributions(e.type, e.data, 1)][:_MAX_CITED]
        return Verdict("meterDiscrepancy", self.key, obs.machine, {
            "meter": meter, "expected_min": lo, "expected_max": hi, "seen": delta,
            "difference": difference, "cause": str(cause), "evidence": evidence,
            "rule": source, **span})


class Reconciler:
    """Every machine's windows, by `Observation.key`. `day_start_s`: seconds after midnight UTC
    at which a gaming day begins (06:00 by default)."""

    def __init__(self, day_start_s: float = 6 * 3600) -> None:
        self.day_start_s = day_start_s
        self.machines: dict[str, MachineReconciler] = {}
        self.discrepancies: Counter[tuple[str, str]] = Counter()
        # Meters of each machine whose latest window did not add up (cleared by a reconciled
        # window): what /health, diag and the board show as open.
        self.open: dict[str, list[str]] = {}
        self.windows = 0

    def observe(self, obs: Observation) -> list[Verdict]:
        m = self.machines.get(obs.key)
        if m is None:
            m = self.machines[obs.key] = MachineReconciler(obs.key, self.day_start_s)
        verdicts = m.observe(obs)
        found = [v.data["meter"] for v in verdicts if v.type == "meterDiscrepancy"]
        for meter in found:
            self.discrepancies[(obs.key, meter)] += 1
        if found:
            self.open[obs.key] = found
        if any(v.type == "meterReconciled" for v in verdicts):
            self.open.pop(obs.key, None)
        self.windows += bool(found) or any(v.type == "meterReconciled" for v in verdicts)
        return verdicts

    def summary(self) -> dict[str, Any]:
        """For status (diag, /health, /metrics): windows closed, discrepancies by machine and
        meter since start, and the machines whose latest window did not add up."""
        totals: dict[str, dict[str, int]] = {}
        for (key, meter), n in sorted(self.discrepancies.items()):
            totals.setdefault(key, {})[meter] = n
        return {"windows": self.windows, "discrepancies_total": totals,
                "open": dict(sorted(self.open.items()))}
