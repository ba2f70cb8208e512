"""facebench's benchmark runner, reports and performance scripts (``benchmarks/perf``)."""
