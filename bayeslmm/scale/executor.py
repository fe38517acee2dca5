"""One executor for many independent fits (bootstrap, power analysis, SBC, coverage).

Every many-fit job in bayeslmm goes through :func:`run_tasks`: local worker processes by
default, a Dask cluster unchanged when a ``dask.distributed.Client`` is given, or the
calling process (``n_jobs=1``, for debugging and small jobs). Each task gets its own seed,
derived from one ``random_seed`` by ``numpy.random.SeedSequence.spawn`` and indexed by the
task's position, so the results depend neither on the number of workers nor on the order
in which tasks finish. A task that raises is recorded (its error text), never fatal; the
warnings a task emits are recorded too, so a caller can count singular or unconverged fits.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BayesLMMError

__all__ = ["TaskOutcome", "run_tasks", "task_seeds"]


@dataclass(frozen=True)
class TaskOutcome:
    """What one task gave.

    Attributes
    ----------
    index : int
        The task's position in the input sequence.
    value : object
        The function's return value (None if it raised).
    error : str or None
        ``"ExceptionType: message"`` if the task raised, else None.
    warnings : tuple of str
        ``"WarningCategory: message"`` for every warning the task emitted.
    seconds : float
        Wall time of the task in its worker.
    """

    index: int
    value: Any
    error: str | None = None
    warnings: tuple[str, ...] = field(default=())
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def task_seeds(random_seed, n: int) -> list[np.random.SeedSequence]:
    """``n`` independent seeds derived from one: task ``i`` always gets child ``i``.

    Parameters
    ----------
    random_seed : int, sequence of int, numpy.random.SeedSequence or None
        None draws fresh entropy (the results are then not reproducible).
    n : int
    """
    if isinstance(random_seed, np.random.SeedSequence):
        root = random_seed
    else:
        if isinstance(random_seed, (bool, float, str)) or (
                random_seed is not None and not isinstance(random_seed, (int, np.integer, Sequence))):
            raise BayesLMMError(f"random_seed must be a whole number, got {random_seed!r}")
        try:
            root = np.random.SeedSequence(random_seed)
        except (TypeError, ValueError) as exc:
            raise BayesLMMError(f"random_seed must be a non-negative whole number, got {random_seed!r}") from exc
    return root.spawn(n)


def _call(function: Callable, index: int, task, seed: np.random.SeedSequence) -> TaskOutcome:
    """Run one task in a worker, turning an exception into a recorded error."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value, error = function(task, seed), None
        except Exception as exc:  # a failed fit is counted, never fatal
            value = None
            last = traceback.extract_tb(exc.__traceback__)[-1:]
            where = f" (at {last[0].filename.rsplit(os.sep, 1)[-1]}:{last[0].lineno})" if last else ""
            error = f"{type(exc).__name__}: {exc}{where}"
    messages = tuple(f"{w.category.__name__}: {w.message}" for w in caught)
    return TaskOutcome(index=index, value=value, error=error, warnings=messages,
                       seconds=time.perf_counter() - t0)


class _Progress:
    """A one-line progress counter on stderr (no dependency)."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.total, self.description, self.enabled = total, description, enabled and total > 0
        self.done = self.failed = 0
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, outcome: TaskOutcome) -> None:
        self.done += 1
        self.failed += not outcome.ok
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.2 or self.done == self.total):
            self._last = now
            failed = f", {self.failed} failed" if self.failed else ""
            end = "\n" if self.done == self.total else ""
            sys.stderr.write(f"\r{self.description}: {self.done}/{self.total}{failed} "
                             f"[{now - self.t0:.0f} s]{end}")
            sys.stderr.flush()


def _check_function(function) -> None:
    if not callable(function):
        raise BayesLMMError(f"the task function must be callable, got {type(function).__name__}")


def run_tasks(function: Callable[[Any, np.random.SeedSequence], Any], tasks: Sequence, *,
              random_seed=None, client=None, n_jobs: int | None = None,
              progressbar: bool = True, description: str = "tasks") -> list[TaskOutcome]:
    """Run ``function(task, seed)`` for every task, in parallel, and return the outcomes in
    task order.

    Parameters
    ----------
    function : callable
        ``function(task, seed) -> value`` with ``seed`` a ``numpy.random.SeedSequence``
        (``np.random.default_rng(seed)``, or ``int(seed.generate_state(1)[0])`` for
        samplers that want an int). For worker processes or Dask it must be picklable: a
        module-level function, or a ``functools.partial`` of one.
    tasks : sequence
        One picklable argument per task.
    random_seed : int or None
        The one seed every task seed derives from (task ``i`` gets child ``i``).
    client : dask.distributed.Client, optional
        Run the tasks on this Dask cluster instead of local processes.
    n_jobs : int, optional
        Local worker processes (default: the number of CPUs); 1 runs every task in this
        process, one after the other.
    progressbar : bool
        Show a progress counter on stderr.
    description : str
        What the progress counter calls the tasks.

    Returns
    -------
    list of TaskOutcome
        ``outcomes[i]`` belongs to ``tasks[i]``; failed tasks have ``error`` set.
    """
    _check_function(function)
    tasks = list(tasks)
    seeds = task_seeds(random_seed, len(tasks))
    progress = _Progress(len(tasks), description, progressbar)
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1):
        raise BayesLMMError(f"n_jobs must be a whole number of at least 1, got {n_jobs!r}")
    outcomes: list[TaskOutcome | None] = [None] * len(tasks)
    if not tasks:
        return []
    if client is not None:
        _run_dask(client, function, tasks, seeds, outcomes, progress)
    elif n_jobs == 1 or len(tasks) == 1:
        for i, (task, seed) in enumerate(zip(tasks, seeds)):
            outcomes[i] = _call(function, i, task, seed)
            progress.update(outcomes[i])
    else:
        _run_local(function, tasks, seeds, outcomes, progress, n_jobs or os.cpu_count() or 1)
    return outcomes  # type: ignore[return-value]


def _run_local(function, tasks, seeds, outcomes, progress, n_jobs: int) -> None:
    # spawn, not fork: the parent may hold threads (numba, BLAS, Dask) that fork would copy
    # in an undefined state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(tasks)), mp_context=context) as pool:
        pending = {pool.submit(_call, function, i, task, seed): i
                   for i, (task, seed) in enumerate(zip(tasks, seeds))}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker itself died (e.g. killed for memory)
                    outcome = TaskOutcome(index=i, value=None, error=f"{type(exc).__name__}: {exc}")
                outcomes[i] = outcome
                progress.update(outcome)


def _run_dask(client, function, tasks, seeds, outcomes, progress) -> None:
    try:
        from distributed import as_completed
    except ImportError as exc:  # pragma: no cover - a client implies distributed is installed
        raise BayesLMMError("a Dask client was given but dask.distributed is not installed: "
                            "pip install 'bayeslmm[dask]'") from exc
    # the function (with what it carries, e.g. a design) goes to every worker once, not once per task
    [shared] = client.scatter([function], broadcast=True, hash=False)
    futures = client.map(_call, [shared] * len(tasks), range(len(tasks)), tasks, seeds, pure=False)
    index = {future.key: i for i, future in enumerate(futures)}
    for future in as_completed(futures):
        i = index[future.key]
        try:
            outcome = future.result()
        except Exception as exc:  # a worker lost or killed
            outcome = TaskOutcome(index=i, value=None, error=f"{type(exc).__name__}: {exc}")
        outcomes[i] = outcome
        progress.update(outcome)
