"""What a run directory is and how stages run in it: the layout (every path, tracking key and run name),
atomic checksummed files, the one file lock, the results table, the run context (config, data, tracking)
and the stage runner, and the torchrun helpers.

files.py and locks.py import nothing heavy (the tracking helper process uses them without torch);
the rest may import training, pruning, models, data, config and tracking. Nothing here imports a workflow.
"""
