"""Process settings for a serving process, applied once by ``spcs-llm serve`` before the server starts.

Garbage collection. A 1,000-row batch keeps thousands of small objects alive for its duration (a task, a
future and a request per row), so with CPython's defaults (a young collection every 700 allocations, and a full
collection whenever the survivors grow by a quarter) a loaded server ran a full collection every few batches,
each walking every object that the imported libraries had made (~60k of them): ~50-100 ms pauses that were the
whole p99 of a 100-row batch, and a third of the CPU (measured with ``bench/bench_gateway.py``). So:

- ``gc.freeze()`` moves everything that exists at start-up (modules, classes, the app) out of the collector's
  reach: it is never garbage, and it is no longer walked by each full collection;
- a young collection every 50,000 allocations instead of 700: per-row objects mostly die before one runs, and
  memory held by cyclic garbage stays bounded at that many objects (a few MB);
- once the engines are up, what their start made (the scheduler, the result cache's shards) is frozen too
  (:func:`settle`). The cache's ordered dicts are made after ``tune_gc`` and stay tracked; a young collection
  walks every entry of a young container, and a server whose rows make little garbage may not run its first
  young collection before the cache holds hundreds of thousands of entries: that first collection took
  150-490 ms (measured with ``bench/bench_gateway.py --gc-stats``), and the next one, of the older generation
  they moved to, 150-450 ms more.

Nothing here changes behaviour; reference counting still frees almost everything at once.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000


_tuned = False


def tune_gc() -> None:
    """Freeze what start-up made and collect young objects less often (see the module docstring)."""
    global _tuned
    _tuned = True
    settle()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


def settle() -> None:
    """Collect, then freeze what is alive: it lives as long as the process (the start-up heap when
    :func:`tune_gc` runs; the scheduler and the cache's containers once the engines are up). Only in a process
    that ``tune_gc`` tuned; elsewhere (a test's app) nothing."""
    if _tuned:
        gc.collect()
        gc.freeze()
