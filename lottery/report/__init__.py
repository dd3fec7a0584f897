"""Reports: the one table formatter (tables.py), the one figure factory and the run figures (figures.py), the
tables and figures of one run directory (run_report.py), the seeds aggregated (aggregate.py) and the robustness
summary with the prune potential (robustness.py).

May import lottery.run (layout, files, results) and matplotlib; nothing here trains or tracks by itself.
"""
