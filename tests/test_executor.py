"""The executor: per-task seeds, failures recorded, results independent of the worker count."""

import warnings

import numpy as np
import pytest

from bayeslmm.errors import BayesLMMError
from bayeslmm.scale.executor import run_tasks, task_seeds


def _draw(task, seed):
    """A task whose value depends on its seed and its argument."""
    return task + np.random.default_rng(seed).normal()


def _fails_on_odd(task, seed):
    if task % 2:
        raise ValueError(f"odd task {task}")
    warnings.warn("singular fit", UserWarning)
    return task


def test_seeds_are_derived_per_task_and_reproducible():
    a = [s.generate_state(2) for s in task_seeds(1, 5)]
    b = [s.generate_state(2) for s in task_seeds(1, 7)[:5]]
    np.testing.assert_array_equal(a, b)  # task i's seed does not depend on how many tasks
    assert len({tuple(x) for x in a}) == 5


def test_results_do_not_depend_on_workers_or_order():
    tasks = list(range(6))
    serial = run_tasks(_draw, tasks, random_seed=42, n_jobs=1, progressbar=False)
    parallel = run_tasks(_draw, tasks, random_seed=42, n_jobs=2, progressbar=False)
    assert [o.index for o in parallel] == tasks
    np.testing.assert_array_equal([o.value for o in serial], [o.value for o in parallel])
    other = run_tasks(_draw, tasks, random_seed=43, n_jobs=1, progressbar=False)
    assert not np.allclose([o.value for o in serial], [o.value for o in other])


def test_failures_and_warnings_are_recorded_not_fatal(capsys):
    outcomes = run_tasks(_fails_on_odd, range(4), random_seed=0, n_jobs=1, description="fits")
    assert [o.ok for o in outcomes] == [True, False, True, False]
    assert outcomes[1].error.startswith("ValueError: odd task 1")
    assert outcomes[0].warnings == ("UserWarning: singular fit",)
    assert "fits: 4/4, 2 failed" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    ({"random_seed": "abc"}, "random_seed must be a whole number"),
    ({"random_seed": -1}, "non-negative whole number"),
    ({"n_jobs": 0}, "n_jobs must be a whole number of at least 1"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(BayesLMMError, match=message):
        run_tasks(_draw, [1], **kwargs)


def test_a_real_dask_cluster_gives_the_serial_results(dask_client):
    """Two worker processes: the same values as in process, in task order, failures and
    warnings recorded; the function is a bayeslmm one (partial of a module-level function),
    which the workers import, as power analysis sends it."""
    from functools import partial

    import bayeslmm as blm
    from bayeslmm.scale.power import _simulate_and_test, _spec

    fit = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy")).fit()
    covs = {(b.group, b.terms): c for b, c in zip(fit.design.blocks, fit.covariances)}
    spec = _spec(fit, fit.design, fit.beta, covs, fit.sigma, "Days", "wald")
    function = partial(_simulate_and_test, spec)
    serial = run_tasks(function, range(5), random_seed=3, n_jobs=1, progressbar=False)
    cluster = run_tasks(function, range(5), random_seed=3, client=dask_client, progressbar=False)
    assert [o.index for o in cluster] == list(range(5))
    assert [o.value for o in cluster] == [o.value for o in serial]
    failed = run_tasks(partial(_fails_on_odd_module_level), range(4), random_seed=0, client=dask_client,
                       progressbar=False)
    assert [o.ok for o in failed] == [True, False, True, False]
    assert failed[1].error.startswith("ValueError: odd task 1")
    assert failed[0].warnings == ("UserWarning: singular fit",)


def _fails_on_odd_module_level(task, seed):
    # a module-level function of the test module (Dask pickles it with cloudpickle)
    return _fails_on_odd(task, seed)
