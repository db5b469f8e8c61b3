"""Benchmarks (`make bench`, not part of `make test`): ingest, drain, end to end, memory,
each against a naive baseline measured in the same run. Entry point: `python -m bench.run`."""
