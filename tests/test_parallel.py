"""morphllr.parallel: results in job order, lazy jobs, same results for any worker count, clean shutdown.

Workers are module-level functions (as the runner requires); jobs that must be slow sleep for
fractions of a second, so the file runs in a few seconds on a busy two-core machine.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from morphllr.errors import MorphllrError
from morphllr.parallel import concat_in_processes, how_it_ended, map_in_processes

pytestmark = pytest.mark.timeout(120)


def _square_late_first(job: tuple[int, int]) -> tuple[int, int]:
    """Early jobs sleep longest, so their results arrive after later jobs'."""
    index, n = job
    time.sleep(0.02 * (n - index))
    return index, index * index


def _draws(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=50)


def _fail_on_three(job: tuple[int, str]) -> int:
    """Job 0 sleeps a long time and job 3 fails, while the other worker is still busy with job 0."""
    index, folder = job
    if index == 3:
        raise ValueError(f"galaxy {index}: bad pixels")
    (Path(folder) / f"{index}.pid").write_text(str(os.getpid()))
    time.sleep(60 if index == 0 else 0.01)
    return index


def _slow_pid(job: tuple[int, str]) -> int:
    index, folder = job
    # written then renamed: a worker terminated mid-write must not leave an empty .pid file behind
    scratch = Path(folder) / f"{index}.pid.partial"
    scratch.write_text(str(os.getpid()))
    scratch.rename(Path(folder) / f"{index}.pid")
    time.sleep(0.05 if index < 2 else 60)
    return os.getpid()


def _die(job: int) -> int:
    if job == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return job


def _sigint_ignored(job: int) -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def _pair(job: int) -> list[int]:
    return [job, -job]


def _reaped(pid: int) -> bool:
    """True when ``pid`` is no child of ours any more: neither running nor a zombie waiting to be reaped."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("*.pid")]


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_job_order(workers):
    n = 8
    results = list(map_in_processes(_square_late_first, [(i, n) for i in range(n)], workers))
    assert results == [(i, i * i) for i in range(n)]


def test_workers_1_and_2_give_identical_results():
    one = list(map_in_processes(_draws, range(10), 1))
    two = list(map_in_processes(_draws, range(10), 2))
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(one[0], one[1])  # the jobs differ: the comparison means something


@pytest.mark.parametrize("workers, in_flight", [(1, None), (2, 2), (2, 5)])
def test_jobs_are_taken_lazily(workers, in_flight):
    """An endless job stream works, and never more than ``in_flight`` jobs run ahead of the results."""
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    window = in_flight or 2 * workers
    results = map_in_processes(_draws, endless(), workers, in_flight=in_flight)
    got = []
    for k, value in enumerate(itertools.islice(results, 6)):
        ahead = pulled - (k + 1)  # jobs taken beyond the results returned so far
        assert ahead <= (window if workers > 1 else 0), (k, pulled)
        got.append(value)
    results.close()
    for k, value in enumerate(got):
        np.testing.assert_array_equal(value, _draws(k))


def test_an_error_in_a_worker_reaches_the_caller_with_its_message_and_stops_the_others(tmp_path):
    jobs = [(i, str(tmp_path)) for i in range(6)]
    start = time.monotonic()
    with pytest.raises(ValueError, match="galaxy 3: bad pixels") as caught:
        list(map_in_processes(_fail_on_three, jobs, 2, in_flight=4))
    assert time.monotonic() - start < 30  # the worker busy with job 0 was not waited for (it sleeps 60 s)
    assert "galaxy 3: bad pixels" in str(caught.value.__cause__)  # the worker's traceback is attached
    assert "_fail_on_three" in str(caught.value.__cause__)
    pids = _pids(tmp_path)
    assert len(set(pids)) == 2 and os.getpid() not in pids  # the jobs ran in two worker processes
    assert all(_reaped(pid) for pid in pids)  # terminated and reaped: no zombie, no orphan


def test_a_consumer_that_stops_early_terminates_the_workers(tmp_path):
    results = map_in_processes(_slow_pid, [(i, str(tmp_path)) for i in range(6)], 2)
    first = next(results)
    start = time.monotonic()
    results.close()
    assert time.monotonic() - start < 30
    assert first != os.getpid()
    pids = _pids(tmp_path)
    assert len(set(pids)) == 2 and all(_reaped(pid) for pid in pids)


def test_finished_runs_leave_no_processes(tmp_path):
    import multiprocessing

    pids = set(map_in_processes(_slow_pid, [(i, str(tmp_path)) for i in range(2)], 2))
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(_reaped(pid) for pid in pids)
    assert multiprocessing.active_children() == []


def test_a_worker_killed_by_the_system_is_one_clear_error():
    with pytest.raises(MorphllrError, match=r"killed by SIGKILL.*memory.*during job 2.*--workers"):
        list(map_in_processes(_die, range(5), 2))


def test_workers_ignore_ctrl_c_only_the_parent_reacts():
    # A shell that starts the test run in the background hands it SIGINT already ignored, so the parent gets a
    # known handler first and must still have it afterwards.
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert all(map_in_processes(_sigint_ignored, range(4), 2))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the parent's handler is untouched
    finally:
        signal.signal(signal.SIGINT, original)


def test_concat_in_processes_keeps_order_and_reports_progress():
    seen = []
    assert concat_in_processes(_pair, range(5), 2, progress=seen.append) == [0, 0, 1, -1, 2, -2, 3, -3, 4, -4]
    assert seen == [2, 4, 6, 8, 10]


def test_how_a_child_ended_in_words():
    assert how_it_ended(-signal.SIGKILL).startswith("killed by SIGKILL (the system ends processes")
    assert how_it_ended(-signal.SIGTERM) == "killed by SIGTERM"
    assert how_it_ended(3) == "exited with status 3"
