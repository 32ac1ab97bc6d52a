"""Fault scenarios for the simulated EGM (docs/sas.md, "Simulator"), decided by a seeded RNG.

Answer faults hit the machine's answers on the way out; the machine's state is as if the answer
had gone out intact, which is what the host sees on a noisy line:
  * `silence` drops an answer (any answer, a one-byte one included);
  * `crc` flips a bit of a CRC-protected answer (two bytes or more);
  * `garbage` prefixes bytes that cannot start an answer (never the address, so a host that
    resynchronises past them finds the real frame);
  * `junk` puts 1-3 arbitrary bytes (the address and valid exception codes included) before,
    after or inside any answer, a one-byte general-poll answer too (`3C 2A 7E`): a host that
    takes the first byte of a GP answer on sight records `3C` and acknowledges the real `7E`;
  * `truncate` cuts a multi-byte answer short;
  * `split` sends an answer in two parts with `split_gap_s` of silence in between (longer than
    the 5 ms inter-byte limit of reference 2.1): the first part is an answer cut short;
  * `slow` holds an answer back `slow_s`; `busy` answers `addr 00` instead.
Exception faults, per raised exception: `duplicate` raises it twice (a genuine repeat), `power`
cycles the machine's power, `overflow` raises a burst past the FIFO.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["FAULT_KINDS", "LINE_FAULTS", "FaultInjector", "FaultPlan"]

FAULT_KINDS = ("crc", "silence", "garbage", "slow", "busy", "duplicate", "power", "overflow",
               "junk", "truncate", "split")
# The faults of the line itself (what a noisy cable does to answers), as opposed to the machine.
LINE_FAULTS = ("crc", "silence", "garbage", "junk", "truncate", "split")


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """`kinds` to inject; `probability` per answer (answer faults) or per raised exception
    (duplicate, power, overflow)."""

    kinds: frozenset[str] = frozenset()
    probability: float = 0.05
    slow_s: float = 0.15
    power_off_s: float = 2.0
    split_gap_s: float = 0.03
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown faults: {', '.join(sorted(unknown))}")


class FaultInjector:
    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed)
        self.injected: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def roll(self, kind: str) -> bool:
        if kind in self.plan.kinds and self._rng.random() < self.plan.probability:
            self.injected[kind] += 1
            return True
        return False

    def corrupt(self, frame: bytes) -> bytes:
        i = self._rng.randrange(1, len(frame))
        return frame[:i] + bytes([frame[i] ^ (1 << self._rng.randrange(8))]) + frame[i + 1:]

    def garbage(self, address: int) -> bytes:
        # Bytes that cannot be mistaken for the start of an answer, so the host must resync.
        allowed = [b for b in range(256) if b not in (address, address | 0x80)]
        return bytes(self._rng.choice(allowed) for _ in range(self._rng.randint(1, 6)))

    def junk(self, answer: bytes) -> bytes:
        """`answer` with 1-3 arbitrary bytes before it, after it or inside it."""
        extra = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(1, 3)))
        i = self._rng.randint(0, len(answer))
        return answer[:i] + extra + answer[i:]

    def truncate(self, answer: bytes) -> bytes:
        return answer[:self._rng.randrange(1, len(answer))]

    def split_point(self, answer: bytes) -> int:
        return self._rng.randrange(1, len(answer))
