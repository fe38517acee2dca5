"""Many fits and big data: the executor, power analysis, out-of-core statistics, simulation."""
