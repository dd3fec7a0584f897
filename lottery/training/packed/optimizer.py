"""One optimizer over the stacked parameters, whose step is each model's own solo step.

SGD, Adam and AdamW update every weight from its own gradient and state with scalars the models share
(learning rate, betas, weight decay, and the step count: a pack moves in lockstep). So torch's own
optimizers (foreach, as the solo loop builds them, through the same optimizer_for) stepping the stacked
(K, ...) tensors apply exactly each model's arithmetic. Masks stack too: for Adam/AdamW a MaskedAdam whose
kept-tensors are (K, ...), so pruned weights stay 0 inside the step; for SGD one fused multiply after it.
A model without a mask in a pack with masked ones gets all-ones: its arithmetic is unchanged.

Each model's optimizer state reads and writes in the solo optimizer's state_dict format, so a checkpoint
written here resumes in the solo loop and the other way round.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from lottery.errors import CorruptFileError
from lottery.pruning.mask import Mask
from lottery.training.optimizers import optimizer_for
from lottery.training.packed.network import Stack


class PackOptimizer:
    def __init__(self, stack: Stack, train_cfg, masks: Sequence[Optional[Mask]]):
        self.size = stack.size
        names = [name for name, tensor in stack.params.items() if tensor.requires_grad]
        self.params = [stack.params[name] for name in names]
        masked = [name for name in names if any(mask is not None and name in mask for mask in masks)]
        kept = {name: torch.stack([
            (mask[name] if mask is not None and name in mask else torch.ones(stack.params[name].shape[1:],
                                                                              dtype=torch.bool)).to(stack.params[name].device)
            for mask in masks]) for name in masked}
        adam = train_cfg.optimizer in ("adam", "adamw")
        self.optimizer = optimizer_for(self.params, train_cfg,
                                       {stack.params[name]: kept[name] for name in masked} if adam and masked else None)
        self._enforced: list[torch.Tensor] = []
        self._factors: list[torch.Tensor] = []
        if not adam and masked:  # SGD: zero the pruned weights after the step, as Mask.enforcer does
            self._enforced = [stack.params[name] for name in masked]
            self._factors = [kept[name].to(dtype=stack.params[name].dtype) for name in masked]

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()
        if self._enforced:
            with torch.no_grad():
                torch._foreach_mul_(self._enforced, self._factors)

    # -- per-model state in the solo optimizer's format -------------------------------------------
    def job_state(self, index: int) -> dict:
        """Model `index`'s optimizer state_dict, as its solo optimizer would write it (own storage)."""
        whole = self.optimizer.state_dict()
        state = {key: {name: _slice(value, index) for name, value in entry.items()}
                 for key, entry in whole["state"].items()}
        return {"state": state, "param_groups": whole["param_groups"]}

    def load_all(self, states: Sequence[dict]) -> None:
        """Every model's state at once (all resume at the same step)."""
        if len(states) != self.size:
            raise ValueError(f"{len(states)} optimizer states for a pack of {self.size}")
        first = states[0]
        stacked = {}
        for key, entry in first["state"].items():
            stacked[key] = {}
            for name, value in entry.items():
                values = [_state_entry(state, key, name) for state in states]
                if torch.is_tensor(value) and value.dim() > 0:
                    stacked[key][name] = torch.stack([v.to(value.device) for v in values])
                else:
                    if any(not _same(v, value) for v in values):
                        raise CorruptFileError(f"optimizer state {name!r} differs between the models of a pack; "
                                               f"they cannot resume together")
                    stacked[key][name] = value
        self.optimizer.load_state_dict({"state": stacked, "param_groups": first["param_groups"]})

    def load_slot(self, index: int, state: dict) -> None:
        """Model `index`'s state into its slice, the others' untouched (a model joining its pack mid-run)."""
        with torch.no_grad():
            for key, parameter in enumerate(self.params):
                current = self.optimizer.state.get(parameter, {})
                saved = state["state"].get(key, {})
                if set(saved) != set(current):
                    raise CorruptFileError(f"optimizer state of parameter {key} has entries {sorted(saved)}, "
                                           f"the pack's have {sorted(current)}")
                for name, value in saved.items():
                    mine = current[name]
                    if torch.is_tensor(mine) and mine.dim() > 0:
                        mine[index].copy_(value)
                    elif not _same(mine, value):
                        raise CorruptFileError(f"optimizer state {name!r} is {value!r} in the checkpoint but "
                                               f"{mine!r} in the pack: the model cannot join it here")
        if hasattr(self.optimizer, "_synced"):
            self.optimizer._synced = False  # MaskedAdam: re-zero pruned weights and moments once (a no-op here)


def _slice(value, index: int):
    if torch.is_tensor(value) and value.dim() > 0:
        return value[index].clone()
    return value.clone() if torch.is_tensor(value) else value


def _state_entry(state: dict, key, name: str):
    try:
        return state["state"][key][name]
    except KeyError:
        raise CorruptFileError(f"optimizer state of parameter {key} lacks {name!r} in one model of the pack") from None


def _same(a, b) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    return a == b
