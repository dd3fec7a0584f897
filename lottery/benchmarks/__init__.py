"""The benchmarks behind `lottery bench`: one module per benchmark, each with `run(quick) -> list[BenchEntry]`,
listed in registry.py (the one place to add one). Shared pieces: timing.py (side-by-side, interleaved
timing with medians) and result.py (BenchEntry and Goal).

May import anything in the library; never the CLI.
"""
