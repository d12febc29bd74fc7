"""Studies and operations: sweeps, grids, reports, statistics, benchmarks, local deployments and processes."""
