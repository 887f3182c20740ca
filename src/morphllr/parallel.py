"""Independent jobs in a process pool, results in job order.

Fitting and rendering galaxies are embarrassingly parallel; both stages use this one
runner so that start method, ordering and clean shutdown (no orphaned workers after an
error or Ctrl-C) are the same everywhere.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator


def map_in_processes(worker: Callable[[Any], Any], jobs: list, workers: int) -> Iterator[Any]:
    """Yield ``worker(job)`` for every job, in order, in-process or in a process pool.

    Args:
        worker: picklable function of one job.
        jobs: the jobs.
        workers: processes (1, or a single job, runs here without a pool).

    Returns:
        (yields) each job's result, in job order.
    """
    if workers <= 1 or len(jobs) <= 1:
        yield from map(worker, jobs)
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    # fork: workers inherit already-built tables (GalSim profiles, PSF kernels) instead of rebuilding them
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        yield from pool.map(worker, jobs)
    finally:
        pool.shutdown(cancel_futures=True)


def concat_in_processes(worker: Callable[[Any], Iterable], jobs: list, workers: int, progress=None) -> list:
    """:func:`map_in_processes` for workers that return lists: the concatenated results.

    Args:
        worker, jobs, workers: as for :func:`map_in_processes`.
        progress: optional callable(number of results so far).

    Returns:
        all results, in job order.
    """
    results: list = []
    for part in map_in_processes(worker, jobs, workers):
        results.extend(part)
        if progress:
            progress(len(results))
    return results
