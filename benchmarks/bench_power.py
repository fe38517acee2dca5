"""Power analysis on Dask: 1,000 simulations of a sleepstudy-sized design.

``Reaction ~ Days + (Days | Subject)`` (18 subjects x 10 days), simulated at a slope of 3 with
the fit's variance components, refitted by REML and tested (Wald z), three ways with one
seed: in this process (``n_jobs=1``), on a 2-worker ``dask.distributed.LocalCluster``
(2 processes, 1 thread each), and on local spawn processes (``n_jobs=2``). Prints and
writes benchmarks/out/bench_power.txt: wall times, the speed-up over one process, the
power with its interval, and whether the three runs gave identical tables.

Run: ``python benchmarks/bench_power.py [--nsim 1000]`` (the machine has 2 cores; timings on
a shared machine are noisy, so the ratio of runs made together is what to read).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

import bayeslmm as blm

OUT = Path(__file__).resolve().parent / "out" / "bench_power.txt"
COLUMNS = ["estimate", "std_error", "statistic", "p_value", "singular"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nsim", type=int, default=1000)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    fit = blm.LMM("Reaction ~ Days + (Days | Subject)", blm.datasets.load("sleepstudy")).fit()
    kwargs = {"nsim": args.nsim, "fixef": {"Days": 3.0}, "method": "wald", "random_seed": 2024, "progressbar": False}
    lines = [(f"bench_power: {args.nsim} simulations of Reaction ~ Days + (Days | Subject), sleepstudy design "
             f"(180 rows, 18 subjects), slope 3, Wald z test, REML refits"),
             (f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, shared with other jobs; "
             f"load average at the start {os.getloadavg()[0]:.1f}"), ""]

    start = time.perf_counter()
    serial = blm.power(fit, "Days", n_jobs=1, **kwargs)
    t_serial = time.perf_counter() - start
    lines.append(f"one process (n_jobs=1):           {t_serial:7.1f} s")

    start = time.perf_counter()
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                      silence_logs=50) as cluster, Client(cluster) as client:
        t_up = time.perf_counter() - start
        start = time.perf_counter()
        on_dask = blm.power(fit, "Days", client=client, **kwargs)
        t_dask = time.perf_counter() - start
    lines.append(f"Dask LocalCluster, 2 workers:     {t_dask:7.1f} s  (+ {t_up:.1f} s to start the cluster)  "
                 f"speed-up {t_serial / t_dask:.2f}x")

    start = time.perf_counter()
    local = blm.power(fit, "Days", n_jobs=2, **kwargs)
    t_local = time.perf_counter() - start
    lines.append(f"local spawn processes, n_jobs=2:  {t_local:7.1f} s  speed-up {t_serial / t_local:.2f}x "
                 "(includes starting the processes)")

    same_dask = serial.runs[COLUMNS].equals(on_dask.runs[COLUMNS])
    same_local = serial.runs[COLUMNS].equals(local.runs[COLUMNS])
    lines += ["", serial.summary(), "",
              f"identical runs table (estimate, se, statistic, p, singular), 1 process vs 2 Dask workers: {same_dask}",
              f"identical runs table, 1 process vs 2 local processes: {same_local}",
              (f"mean seconds per simulation in a worker: {np.mean(serial.runs['seconds']):.4f} (1 process), "
              f"{np.mean(on_dask.runs['seconds']):.4f} (Dask)"),
              f"load average at the end: {os.getloadavg()[0]:.1f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
