"""Fault scenarios for the simulated EGM (design.md section 8), decided by a seeded RNG.

Answer faults hit the machine's answers on the way out; the machine's state is as if the answer
had gone out intact, which is what the host sees on a noisy line. Faults never touch a bare
one-byte general-poll answer: it has no CRC, so no host could tell a corrupted code from a real one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["FAULT_KINDS", "FaultInjector", "FaultPlan"]

FAULT_KINDS = ("crc", "silence", "garbage", "slow", "busy", "duplicate", "power", "overflow")


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """`kinds` to inject; `probability` per answer (answer faults) or per raised exception
    (duplicate, power, overflow)."""

    kinds: frozenset[str] = frozenset()
    probability: float = 0.05
    slow_s: float = 0.15
    power_off_s: float = 2.0
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
