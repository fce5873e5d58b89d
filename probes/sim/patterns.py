"""Memory-use shapes of GPU processes, as functions of the process's age in seconds.

Shared by the simulated devices and by the leak-detection benchmark, so both speak of the
same shapes: a steady leak, a staircase leak, an allocator sawtooth, a warm-up that then
stays flat, training-epoch peaks, a constant footprint, and a replayed recording.
Noise is deterministic (a hash of seed, pid and time bucket), so runs repeat exactly.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

PATTERNS = ("constant", "leak", "staircase", "sawtooth", "warmup", "epochs", "replay")


@dataclass(frozen=True)
class MemoryPattern:
    kind: str
    base: float = 0.0  # bytes: constant size, leak/staircase start, sawtooth low, warm-up start
    peak: float = 0.0  # bytes: sawtooth high, warm-up plateau, epoch peak
    rate: float = 0.0  # bytes per second (leak)
    step: float = 0.0  # bytes (staircase)
    period: float = 0.0  # seconds (staircase step, sawtooth, epoch)
    ramp: float = 0.0  # seconds (warm-up ramp, epoch peak length)
    noise: float = 0.0  # bytes, amplitude of deterministic noise
    points: tuple[tuple[float, float], ...] = ()  # (age s, bytes), replay
    loop: bool = False  # replay from the start after the last point
    free_at: float | None = None  # age at which the process frees everything (stays alive)

    def at(self, age: float, seed: int = 0, pid: int = 0) -> float:
        """Bytes held at ``age`` seconds after the process started."""
        if age < 0:
            return 0.0
        if self.free_at is not None and age >= self.free_at:
            return 0.0
        value = self._shape(age)
        if self.noise:
            value += self.noise * smooth_noise(seed, pid, age)
        return max(0.0, value)

    def _shape(self, age: float) -> float:
        k = self.kind
        if k == "constant":
            return self.base
        if k == "leak":
            return self.base + self.rate * age
        if k == "staircase":
            return self.base + self.step * math.floor(age / self.period)
        if k == "sawtooth":
            return self.base + (self.peak - self.base) * ((age % self.period) / self.period)
        if k == "warmup":
            return self.base + (self.peak - self.base) * min(1.0, age / self.ramp)
        if k == "epochs":
            return self.peak if (age % self.period) < self.ramp else self.base
        if k == "replay":
            return self._replay(age)
        raise ValueError(f"unknown memory pattern {k!r}")

    def _replay(self, age: float) -> float:
        pts = self.points
        if self.loop and pts[-1][0] > 0:
            age %= pts[-1][0]
        times = [t for t, _ in pts]
        i = bisect.bisect_right(times, age)
        if i == 0:
            return pts[0][1]
        if i == len(pts):
            return pts[-1][1]
        (t0, v0), (t1, v1) = pts[i - 1], pts[i]
        return v0 + (v1 - v0) * (age - t0) / (t1 - t0) if t1 > t0 else v1


def _unit_noise(seed: int, pid: int, bucket: int) -> float:
    """Deterministic value in [-1, 1) for (seed, pid, bucket)."""
    x = (seed * 0x9E3779B1 ^ pid * 0x85EBCA77 ^ bucket * 0xC2B2AE3D) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x / 2**31 - 1.0


def smooth_noise(seed: int, pid: int, t: float, bucket_seconds: float = 30.0) -> float:
    """Noise in [-1, 1) that changes smoothly over ``bucket_seconds``."""
    b = t / bucket_seconds
    i = math.floor(b)
    f = b - i
    return (1 - f) * _unit_noise(seed, pid, i) + f * _unit_noise(seed, pid, i + 1)
