"""Runs side by side: the seeds of a variant (or the cells of a claim) in `jobs` processes, one torch
thread each.

One thread per run, always, also when a run is alone: a run's numbers then do not depend on how many
ran beside it, nor on how many cores the machine has (a matmul's reduction order follows the thread
count, so 1 and 2 threads give results that differ in the last bits). Tiny models barely use a
second thread (a d=64 LM: ~35k tokens/s on one, ~40k on two), so two one-thread runs side by side
nearly double a small CPU's throughput. A stage runs all its runs at once (a variant's 3 seeds, a
task's 3 bases) even on 2 cores: the operating system shares the cores, so the stage takes about
their total over the cores, where a fixed split of 3 runs over 2 processes would take two runs' time;
only the runs' seconds (wall_s) stretch, never their numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def one_thread() -> None:
    """What every run's process does first (also in the parent, for jobs = 1)."""
    import torch

    from .cpu import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(1)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_all(fn: Callable, work: list[tuple], jobs: int = 0, costs: list[float] | None = None) -> list:
    """[fn(*args) for args in work], `jobs` at a time (0: one per core), every run with one thread; results
    in the order of `work`. This process runs its share itself while jobs - 1 fresh processes (spawn:
    forking a process that has used torch is unsafe) run the rest, so a stage pays for one process start
    and torch import fewer. The shares are fixed in advance: by position when the runs cost alike (the
    seeds of a variant), else longest first, each to the least loaded (`costs`, e.g. training steps)."""
    jobs = min(jobs or available_cores(), len(work))
    one_thread()
    if jobs <= 1:
        return [fn(*args) for args in work]
    mine = _share(len(work), jobs, costs)
    theirs = [i for i in range(len(work)) if i not in mine]
    results: list = [None] * len(work)
    with ProcessPoolExecutor(max_workers=jobs - 1, mp_context=get_context("spawn"), initializer=one_thread) as pool:
        futures = {i: pool.submit(fn, *work[i]) for i in theirs}
        for i in mine:
            results[i] = fn(*work[i])
        for i, future in futures.items():
            results[i] = future.result()
    return results


def _share(n: int, jobs: int, costs: list[float] | None) -> list[int]:
    """The items this process runs: every jobs-th one, or (costs given) bucket 0 of a longest-first
    assignment of the items to `jobs` buckets, each item to the least loaded bucket."""
    if costs is None:
        return list(range(0, n, jobs))
    loads, buckets = [0.0] * jobs, [[] for _ in range(jobs)]
    for i in sorted(range(n), key=lambda i: -costs[i]):
        least = loads.index(min(loads))
        loads[least] += costs[i]
        buckets[least].append(i)
    return sorted(buckets[0])
