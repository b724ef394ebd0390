"""The arithmetic of holding batches against Snowflake's retry policy (docs/overload.md).

Snowflake retries a service-function batch that got 404/429/5xx at most ``MAX_BATCH_RETRIES`` times, after an
exponential back-off (bcr-1938), and the whole batch, retries and polling included, must end within
``BATCH_TIMEOUT_SECS``. The server holds a batch while its expected wait fits :data:`HOLD_SHARE` of that timeout
and answers 429 only beyond it (or at the memory bound). So a batch refused on its last retry and then held the
longest still ends in time when the back-off of all its retries, at most ``d * (2**r - 1)`` for a first delay
``d`` doubling ``r`` times, fits the other half: ``r = floor(log2(T * (1 - HOLD_SHARE) / d + 1))``.

Snowflake does not document its back-off; ``d = 1 s`` doubling (with jitter that only shortens it) is the
assumption, as in ``bench/bench_overload.py``. For the default ``BATCH_TIMEOUT_SECS = 3600``: r = 10, whose
back-off lasts 512-1023 s (8.5-17 min) with jitter between x0.5 and x1.
"""

from __future__ import annotations

import math

HOLD_SHARE = 0.5  # a batch is held while its expected wait is at most this share of BATCH_TIMEOUT_SECS
SNOWFLAKE_FIRST_BACKOFF_S = 1.0  # assumed (undocumented): Snowflake's first retry delay, doubling


def max_batch_retries_for(batch_timeout_secs: float, first_backoff_s: float = SNOWFLAKE_FIRST_BACKOFF_S) -> int:
    """The MAX_BATCH_RETRIES whose whole back-off fits the part of BATCH_TIMEOUT_SECS that holding leaves over
    (at least Snowflake's default 3)."""
    spare = batch_timeout_secs * (1 - HOLD_SHARE)
    return max(3, math.floor(math.log2(spare / first_backoff_s + 1)))


def backoff_seconds(retries: int, first_backoff_s: float = SNOWFLAKE_FIRST_BACKOFF_S) -> tuple[float, float]:
    """The shortest and longest total back-off of ``retries`` retries (jitter x0.5 to x1)."""
    longest = first_backoff_s * (2**retries - 1)
    return longest / 2, longest
