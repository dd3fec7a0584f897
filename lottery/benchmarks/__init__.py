"""The benchmarks behind `lottery bench`: one module per benchmark, each with `run(quick) -> list[BenchEntry]`.

Shared pieces: `timing` (side-by-side, interleaved timing with medians) and `result`
(BenchEntry and Goal). The registry, the table and the JSON live in lottery/bench.py.
"""
