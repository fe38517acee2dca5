"""Front-end checks that used to hang: the fixed-effect rank check and the duplicate-name check.

Run: ``python benchmarks/bench_design_checks.py [--repeat 3]``; writes
``benchmarks/out/bench_design_checks.txt``.

1. Rank check of a 1,000-level fixed factor (3,000 rows x 1,001 columns), full rank and with
   one aliased column: :func:`bayeslmm.frontend.design.independent_columns` against the column-at-a-time
   Gram-Schmidt it replaced (reproduced below), same process, same matrices; the kept columns
   must agree.
2. ``blm.LMM`` on a formula with 10,000 fixed terms: parse, checks and the refusal (formulae
   cannot recurse through it), against the quadratic duplicate-column count it replaced.

Timings are medians of ``--repeat`` runs on this machine, shared by other jobs: read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

import bayeslmm as blm
from bayeslmm.frontend.design import independent_columns

OUT = Path(__file__).resolve().parent / "out" / "bench_design_checks.txt"


def old_rank_check(X: np.ndarray) -> list[int]:
    """The replaced implementation: one column at a time, the basis grown by column_stack."""
    keep: list[int] = []
    basis = np.empty((X.shape[0], 0))
    for j in range(X.shape[1]):
        column = X[:, j]
        peak = np.max(np.abs(column))
        column = column / peak if peak > 0 else column
        residual = column - basis @ (basis.T @ column) if basis.shape[1] else column
        scale = np.linalg.norm(column)
        if scale > 0 and np.linalg.norm(residual) > 1e-7 * scale:
            keep.append(j)
            basis = np.column_stack([basis, residual / np.linalg.norm(residual)])
    return keep


def old_duplicate_count(columns: list[str], used: list[str]) -> int:
    """The replaced duplicate-column check: a pass over all columns per used column."""
    return max(int(sum(str(c) == column for c in columns)) for column in used)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    rng = np.random.default_rng(1)
    lines = [f"repeat={repeat}, medians in seconds"]

    n = 3000
    data = pd.DataFrame({"y": rng.normal(size=n), "f": np.repeat([f"L{i:04d}" for i in range(1000)], 3),
                         "x": rng.normal(size=n), "g": np.tile(np.arange(10), 300)})
    X = blm.LMM("y ~ f + x + (1 | g)", data).design.X
    aliased = np.column_stack([X[:, :1], X[:, -1:], X[:, 1:-1], 2.0 * X[:, -1:]])  # x first, 2x last
    for label, matrix in (("full rank", X), ("one aliased column", aliased)):
        t_new, keep_new = timed(lambda: independent_columns(matrix), repeat)
        t_old, keep_old = timed(lambda: old_rank_check(matrix), repeat)
        assert keep_new == keep_old, label
        lines.append(f"rank check, 1,000-level factor, {matrix.shape[0]} x {matrix.shape[1]}, {label}: "
                     f"new {t_new:.2f} s, old {t_old:.2f} s, ratio old/new {t_old / t_new:.1f}x "
                     f"(kept {len(keep_new)} columns, identical)")

    terms = 10_000
    wide = pd.DataFrame({f"x{i}": rng.normal(size=30) for i in range(terms)})
    wide["y"], wide["g"] = rng.normal(size=30), np.repeat(np.arange(6), 5)
    formula = "y ~ " + " + ".join(f"x{i}" for i in range(terms)) + " + (1 | g)"

    def refuse():
        try:
            blm.LMM(formula, wide)
        except blm.FormulaError as exc:
            return str(exc).splitlines()[0][:60]
        raise AssertionError("10,000 terms were not refused")

    t_lmm, message = timed(refuse, repeat)
    columns = [str(c) for c in wide.columns]
    used = [f"x{i}" for i in range(terms)]
    t_dup, _ = timed(lambda: old_duplicate_count(columns, used), 1)
    lines.append(f"LMM with {terms:,} fixed terms (parse, column checks, refusal): {t_lmm:.2f} s "
                 f"('{message}...'); the replaced duplicate-column count alone took {t_dup:.1f} s")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
