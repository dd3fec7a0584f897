"""The experiment orchestrator: the experiment as a graph of stages (graph.py), the one task that runs a stage
anywhere (worker.py), the dependency bookkeeping (scheduler.py), the executors (local.py: worker processes per
device; ray_cluster.py: Ray tasks), the console display (progress.py) and `lottery ticket` itself (experiment.py).

May import everything in the library (workflows, run, report, tracking); only the CLI imports it.
"""
