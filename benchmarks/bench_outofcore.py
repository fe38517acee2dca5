"""Data larger than memory: REML and the posterior of a random-slope model on Parquet rows
that the client never holds.

Writes ``--rows`` rows (default 200,000,000) in ``--groups`` groups (default 100,000) as
Parquet files of ``--chunk`` rows each, generated chunk by chunk (the client holds one chunk):
``y = 250 + 10 x + u0_g + u1_g x + e``, ``x ~ N(0, 1)``, ``sd(u0, u1) = (25, 6)``,
``cor = 0.3``, ``sigma = 25``. Then, on a ``dask.distributed.LocalCluster`` of 2 worker
processes (1 thread each), ``LMM.from_parquet("y ~ x + (x | g)", ...)`` computes the per-group
statistics, ``fit()`` runs REML and ``sample()`` the collapsed sampler (2 chains x 1000 draws).
Records the times, the client process's peak resident memory (getrusage, this process only;
the workers are separate processes) and whether the true values lie inside the 95% intervals
(REML: Wald intervals of the fixed effects; posterior: central intervals of every parameter).

Run (low priority, on a shared machine):
    nice -n 19 python benchmarks/bench_outofcore.py --rows 200000000 --groups 100000 --dir /work/tmp/ooc
Writes benchmarks/out/bench_outofcore.txt (or --out).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

BETA = np.array([250.0, 10.0])
SD = np.array([25.0, 6.0])
COR = 0.3
SIGMA = 25.0


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def write_data(path: Path, rows: int, groups: int, chunk: int, seed: int = 20261128) -> float:
    """Rows in group order, ``chunk`` rows a file; returns the seconds it took."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    per_group = rows // groups
    if per_group * groups != rows or chunk % per_group:
        raise SystemExit("rows must be a multiple of groups, and chunk a multiple of rows per group")
    rng = np.random.default_rng(seed)
    cov = np.array([[SD[0] ** 2, COR * SD[0] * SD[1]], [COR * SD[0] * SD[1], SD[1] ** 2]])
    effects = rng.standard_normal((groups, 2)) @ np.linalg.cholesky(cov).T
    groups_per_chunk = chunk // per_group
    for k, first in enumerate(range(0, groups, groups_per_chunk)):
        g = np.repeat(np.arange(first, min(first + groups_per_chunk, groups), dtype=np.int32), per_group)
        x = rng.standard_normal(len(g))
        y = BETA[0] + effects[g, 0] + (BETA[1] + effects[g, 1]) * x + SIGMA * rng.standard_normal(len(g))
        pq.write_table(pa.table({"g": g, "x": x, "y": y}), path / f"part-{k:05d}.parquet", row_group_size=len(g))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000_000)
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=2_000_000)
    parser.add_argument("--dir", default="/work/tmp/bayeslmm_ooc")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the Parquet files")
    parser.add_argument("--reuse", action="store_true", help="reuse Parquet files already written")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "bench_outofcore.txt"))
    args = parser.parse_args()
    path = Path(args.dir)
    lines = [f"bench_outofcore: {args.rows:,} rows, {args.groups:,} groups, y ~ x + (x | g)",
             f"truth: beta = {BETA.tolist()}, sd(g) = {SD.tolist()}, cor = {COR}, sigma = {SIGMA}",
             (f"machine: {os.cpu_count()} CPUs, shared with other jobs; this process at nice "
             f"{os.nice(0)}"), ""]

    disk = shutil.disk_usage(path.parent if path.parent.exists() else "/")
    lines.append(f"free disk before writing: {disk.free / 2**30:.0f} GiB")
    if args.reuse and path.exists():
        t_write = 0.0
    else:
        t_write = write_data(path, args.rows, args.groups, args.chunk)
    size = sum(f.stat().st_size for f in path.glob("*.parquet"))
    lines.append(f"write Parquet ({len(list(path.glob('*.parquet')))} files, {size / 2**30:.2f} GiB): {t_write:.0f} s"
                 f"; client peak RSS so far {peak_gib():.2f} GiB")
    print("\n".join(lines), flush=True)

    import warnings

    from distributed import Client, LocalCluster

    import bayeslmm as blm

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                      memory_limit="6GiB", silence_logs=50) as cluster, Client(cluster) as client:
        start = time.perf_counter()
        model = blm.LMM.from_parquet("y ~ x + (x | g)", str(path), client=client)
        t_scan = time.perf_counter() - start
        lines.append(f"two passes over the data (levels + statistics), 2 Dask workers: {t_scan:.0f} s; "
                     f"client peak RSS {peak_gib():.2f} GiB")
        print(lines[-1], flush=True)

    start = time.perf_counter()
    fit = model.fit()
    t_fit = time.perf_counter() - start
    table = fit.fixef()
    inside = []
    lines.append(f"REML from the statistics: {t_fit:.1f} s ({fit.opt.evaluations} evaluations); "
                 f"client peak RSS {peak_gib():.2f} GiB")
    for name, true in zip(table.index, BETA):
        lo = table.loc[name, "estimate"] - 1.96 * table.loc[name, "std_error"]
        hi = table.loc[name, "estimate"] + 1.96 * table.loc[name, "std_error"]
        inside.append(lo <= true <= hi)
        lines.append(f"  {name:12s} {table.loc[name, 'estimate']:10.4f}  95% Wald [{lo:.4f}, {hi:.4f}]  "
                     f"truth {true}  inside: {inside[-1]}")
    vc = fit.varcorr()
    lines.append("  variance components (REML): " + ", ".join(
        f"{r.var1 if isinstance(r.var1, str) else 'sigma'}{'/' + r.var2 if isinstance(r.var2, str) else ''} "
        f"{r.sdcor:.4f}" for r in vc.itertuples()))
    print("\n".join(lines[-4:]), flush=True)

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = model.sample(draws=args.draws, tune=args.draws, chains=2, random_seed=1, progressbar=False)
    t_post = time.perf_counter() - start
    lines.append(f"posterior (collapsed sampler, 2 chains x {args.draws} draws + {args.draws} tune): {t_post:.0f} s "
                 f"(sampling {post.idata.posterior.attrs['sampling_seconds']:.0f} s); client peak RSS "
                 f"{peak_gib():.2f} GiB; group effects: {post.idata.posterior.attrs.get('group_effects', 'drawn')}")
    p = post.idata.posterior
    def quant(v):
        return float(v.quantile(0.025)), float(v.quantile(0.975)), float(v.mean())
    checks = [("beta[(Intercept)]", p["beta"].sel(term="(Intercept)"), BETA[0]),
              ("beta[x]", p["beta"].sel(term="x"), BETA[1]),
              ("sd_g[(Intercept)]", p["sd_g"].sel(g__term="(Intercept)"), SD[0]),
              ("sd_g[x]", p["sd_g"].sel(g__term="x"), SD[1]),
              ("cor_g", p["cor_g"], COR), ("sigma", p["sigma"], SIGMA)]
    for name, values, true in checks:
        lo, hi, mean = quant(values)
        inside.append(lo <= true <= hi)
        lines.append(f"  {name:18s} mean {mean:10.4f}  95% [{lo:.4f}, {hi:.4f}]  truth {true}  inside: {inside[-1]}")
    lines += ["", (f"client process peak RSS: {peak_gib():.2f} GiB (limit 4 GiB: "
                  f"{'met' if peak_gib() < 4 else 'NOT met'})"),
              f"true values inside their 95% intervals: {sum(inside)} of {len(inside)}",
              f"total (excluding writing): {t_scan + t_fit + t_post:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(text)
    if not args.keep:
        shutil.rmtree(path)


if __name__ == "__main__":
    main()
