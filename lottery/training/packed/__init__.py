"""Packed training: K models of one architecture and one schedule trained in one step on one device.

trainer.py (train_packed: equivalent to training each job alone), network.py (the K models' tensors stacked,
their forward run once), layers.py (Linear as batched products, Conv2d as grouped convolutions, BatchNorm2d
over K·C channels), optimizer.py (the solo optimizers stepping the stacked tensors, masks kept at 0),
checks.py (what a pack's jobs must share), size.py (choose_pack_size from free device memory).

May import torch and what lottery.training may import, plus lottery.training's own modules.
"""
from lottery.training.packed.layers import PackError
from lottery.training.packed.size import choose_pack_size
from lottery.training.packed.trainer import train_packed

__all__ = ["PackError", "choose_pack_size", "train_packed"]
