"""vgg_ray's benchmarks (run as `python -m bench.bench_train` etc. from the repository root)."""
