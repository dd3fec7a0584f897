"""Workflows: what a command computes, built from stages. ticket.py (θ0, θk and the IMP levels), baselines.py
(pruning at initialisation at the ticket's densities), branches.py (control branches on the ticket's masks),
dense.py (`lottery train`), instability.py (linear mode connectivity), export.py, prune.py (`lottery prune`),
evaluate.py (`lottery evaluate`: every stage on corrupted test sets), reproduce.py (the papers' LeNet results)
and preflight.py (every check made before the first write).

May import everything below (config, data, models, pruning, training, run, tracking, report); never the CLI.
"""
