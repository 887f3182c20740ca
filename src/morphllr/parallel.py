"""Independent jobs in worker processes, results in job order.

Fitting, rendering and preparing galaxies are embarrassingly parallel; every stage uses
this one runner so that start method, ordering, memory bounds and shutdown are the same
everywhere:

* workers ignore SIGINT: Ctrl-C at the terminal reaches the whole process group and only
  the parent reacts (a worker's own KeyboardInterrupt would print a traceback or come back
  as an ordinary job result);
* on any exception in the parent (a job's error, Ctrl-C, the consumer stopping early) the
  workers are terminated at once, never waited for, so the exception reaches the caller's
  atomic-output code immediately;
* a worker that dies (killed by the system when out of memory, or crashed) is reported as
  one clear :class:`~morphllr.errors.MorphllrError` instead of a hang.

Each worker is a process with its own pipe and the parent only sends a job to an idle
worker, so there are no helper threads that could block on a half-written message when a
worker is terminated (``concurrent.futures.ProcessPoolExecutor`` can hang the interpreter
at exit in exactly that case).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import signal
from typing import Any, Callable, Iterable, Iterator, Sized

from morphllr.errors import MorphllrError

_STOP = None  # message asking a worker to exit


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (attached as ``__cause__``)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""


def _serve(conn, worker: Callable[[Any], Any]) -> None:
    """Worker process main loop: receive ``(index, job)``, send ``(index, ok, value, traceback)``."""
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is _STOP:
            return
        index, job = message
        try:
            reply = (index, True, worker(job), "")
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
            reply = (index, False, exc, traceback.format_exc())
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - a result or exception that cannot be pickled
            conn.send((index, False, RuntimeError(f"worker result could not be sent back: {exc!r}"),
                       traceback.format_exc()))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx, worker: Callable[[Any], Any]):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, worker), daemon=True)
        self.process.start()
        child.close()
        self.index: int | None = None  # job being worked on

    def give(self, index: int, job: Any) -> None:
        self.index = index
        try:
            if not self.process.is_alive():
                raise BrokenPipeError
            self.conn.send((index, job))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            # a worker that died while idle (killed, out of memory): one clear line, not a pipe error
            raise MorphllrError(_death_message(self)) from None

    def stop(self, terminate: bool) -> None:
        with contextlib.suppress(Exception):
            if terminate:
                self.process.terminate()
            else:
                self.conn.send(_STOP)
        with contextlib.suppress(Exception):
            self.process.join(timeout=None if not terminate else 5)
        with contextlib.suppress(Exception):
            self.conn.close()


def how_it_ended(code: int | None) -> str:
    """How a child process ended, from its exit code (negative: the signal that killed it), for messages."""
    if code is not None and code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
        if -code == signal.SIGKILL:
            how += " (the system ends processes this way when memory runs out)"
        return how
    return f"exited with status {code}"


def _death_message(worker: _Worker) -> str:
    return (f"a worker process {how_it_ended(worker.process.exitcode)} during job {worker.index}; use fewer "
            "--workers or smaller inputs (--workers 1 runs everything in one process)")


def map_in_processes(worker: Callable[[Any], Any], jobs: Iterable, workers: int,
                     in_flight: int | None = None) -> Iterator[Any]:
    """Yield ``worker(job)`` for every job, in order, in-process or in worker processes.

    Jobs are taken from ``jobs`` lazily, at most ``in_flight`` ahead of the result being
    returned, so a long iterator (e.g. images read from disk) never sits in memory whole.
    An exception raised by a job is raised here (with the worker's traceback as its cause).

    Args:
        worker: function of one job (module-level, so it also works where processes are spawned).
        jobs: the jobs (any iterable).
        workers: processes (1, or a single job, runs here without worker processes).
        in_flight: jobs handed out ahead of the one being returned (default 2 x workers).

    Returns:
        (yields) each job's result, in job order.
    """
    if workers <= 1 or (isinstance(jobs, Sized) and len(jobs) <= 1):
        yield from map(worker, jobs)
        return
    import multiprocessing as mp
    from multiprocessing.connection import wait

    # fork: workers inherit already-built tables (GalSim profiles, PSF kernels) instead of rebuilding them
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    window = max(1, int(in_flight or 2 * workers))
    numbered = enumerate(jobs)
    pool: list[_Worker] = []
    done: dict[int, Any] = {}
    handed = returned = 0
    exhausted = failed = False
    try:
        while True:
            while not exhausted and handed - returned < window:
                idle = next((w for w in pool if w.index is None), None)
                if idle is None and len(pool) < workers:
                    idle = _Worker(ctx, worker)
                    pool.append(idle)
                if idle is None:
                    break
                item = next(numbered, None)
                if item is None:
                    exhausted = True
                    break
                idle.give(*item)
                handed += 1
            if returned in done:
                value = done.pop(returned)
                returned += 1
                yield value
                continue
            if exhausted and returned == handed:
                return
            busy = [w for w in pool if w.index is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for w in busy:
                if w.conn in ready:
                    try:
                        index, ok, value, remote = w.conn.recv()
                    except (EOFError, OSError):
                        w.process.join(timeout=5)
                        raise MorphllrError(_death_message(w)) from None
                    if not ok:
                        if remote:
                            value.__cause__ = _RemoteTraceback(remote)
                        raise value
                    done[index] = value
                    w.index = None
                elif w.process.sentinel in ready:
                    w.process.join(timeout=5)
                    raise MorphllrError(_death_message(w))
    except BaseException:
        failed = True
        raise
    finally:
        for w in pool:
            w.stop(terminate=failed or not exhausted)


def map_items_in_processes(worker: Callable[[Any], Any], items: Iterable, workers: int, chunk: int) -> Iterator[Any]:
    """:func:`map_in_processes` for many small jobs: ``worker(item)`` for every item, in order, the items
    sent to worker processes ``chunk`` at a time (one message per chunk) and still taken lazily.

    Args:
        worker: function of one item (module-level, or a ``functools.partial`` of one).
        items: the items (any iterable; at most ``2 x workers`` chunks are read ahead).
        workers: processes (1: in this process, one item at a time, none read ahead).
        chunk: items per job of a worker process.

    Returns:
        (yields) each item's result, in item order.
    """
    items = iter(items)
    size = max(1, int(chunk)) if workers > 1 else 1
    blocks = iter(lambda: list(itertools.islice(items, size)), [])
    for results in map_in_processes(functools.partial(_each, worker), blocks, workers):
        yield from results


def _each(worker: Callable[[Any], Any], items: list) -> list:
    """``worker`` over one chunk of items (the job of :func:`map_items_in_processes`)."""
    return [worker(item) for item in items]


def concat_in_processes(worker: Callable[[Any], Iterable], jobs: Iterable, workers: int, progress=None) -> list:
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

