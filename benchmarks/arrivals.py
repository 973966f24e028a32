"""When requests arrive in an open-loop run: a Poisson process, or a burstier / smoother one.

Inter-arrival times are gamma-distributed with shape `burstiness` and scale
`1 / (rate * burstiness)`, as vLLM's `bench serve` does: the mean gap is always `1 / rate`;
burstiness 1 is a Poisson process (exponential gaps), below 1 burstier, above 1 more regular
(coefficient of variation `1 / sqrt(burstiness)`). An infinite rate sends everything at once.
The first request arrives at offset 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator


def intervals(rate: float, burstiness: float, rng: random.Random) -> Iterator[float]:
    """Endless gaps in seconds between successive arrivals."""
    if not rate > 0:
        raise ValueError(f"request rate must be > 0, got {rate}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness must be a finite number > 0, got {burstiness}")
    if math.isinf(rate):
        while True:
            yield 0.0
    scale = 1.0 / (rate * burstiness)
    while True:
        yield rng.gammavariate(burstiness, scale)


def arrival_offsets(
    rate: float,
    burstiness: float = 1.0,
    seed: int = 0,
    count: int | None = None,
    duration_s: float | None = None,
) -> list[float]:
    """Arrival times in seconds from the start: `count` of them, or all before `duration_s`
    (whichever bound comes first; at least one bound must be given)."""
    if count is None and duration_s is None:
        raise ValueError("give count or duration_s")
    if count is None and math.isinf(rate):
        raise ValueError("an infinite rate needs a request count")
    rng = random.Random(f"arrivals:{seed}")
    gaps = intervals(rate, burstiness, rng)
    offsets: list[float] = []
    t = 0.0
    while count is None or len(offsets) < count:
        if duration_s is not None and t >= duration_s:
            break
        offsets.append(t)
        t += next(gaps)
    return offsets
