"""Load and overhead benchmarks for Tailor, run as modules (`python -m loadtests.bench_gateway`)."""
