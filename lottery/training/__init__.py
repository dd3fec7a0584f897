"""Training: the one loop (loop.py), the optimizers (optimizers.py), the schedule in iterations and the LR as a
function of the step (plan.py), the device and GPU fast path (device.py), and packed training (packed/: K models
of one architecture in one step, equivalent to training each alone).

May import torch, lottery.errors, lottery.steps, lottery.models.flops, lottery.pruning (masks, MaskedAdam) and
lottery.run.files (checkpoints). Knows no run directory, stage or tracker: callers pass paths and callbacks.
"""
