"""K models of one architecture as one network: their tensors stacked, their forward run once.

Stack holds every parameter and buffer of the K models stacked along a new first dimension, and makes
each model's own tensors views of its slice: a model always shows its current weights (for evaluation,
hooks, checkpoints and load_state_dict), and nothing is copied between steps. release() gives each model
its own storage again.

packed_network() rebuilds the first model's module tree with every Linear, Conv2d and BatchNorm2d
replaced by its packed form (layers.py) and runs that model's own forward on packed activations. Whether
a forward keeps the models apart (only per-channel and elementwise operations between layers) cannot be
read from the code, so check_packed_forward() compares the packed network with each model on a random
batch and refuses the architecture if they differ.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from lottery.training.packed.layers import PackedBatchNorm2d, PackedConv2d, PackedLinear, PackError, packed_logits

PACKED_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)
PROBE_BATCH = 2


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attribute = name.rpartition(".")
    return model.get_submodule(module_name), attribute


def _stacked_like(tensors: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    """torch.stack, except that 4-D weights under channels_last are laid out so that the (K·O, I, kh, kw)
    view the grouped convolution takes, and each model's slice, are channels_last too."""
    first = tensors[0]
    if not (channels_last and first.dim() == 4):
        return torch.stack(tensors)
    out, inp, kh, kw = first.shape
    strides = (out * inp * kh * kw, inp * kh * kw, 1, kw * inp, inp)
    stacked = torch.empty_strided((len(tensors), *first.shape), strides, dtype=first.dtype, device=first.device)
    for index, tensor in enumerate(tensors):
        stacked[index].copy_(tensor)
    return stacked


class Stack:
    """The K models' parameters and buffers, stacked; each model's tensors are views of its slice."""

    def __init__(self, models: Sequence[nn.Module], channels_last: bool = False):
        self.models = list(models)
        self.size = len(self.models)
        first = self.models[0]
        self.params: dict[str, torch.Tensor] = {}
        for name, parameter in first.named_parameters():
            stacked = _stacked_like([dict(m.named_parameters())[name].detach() for m in self.models], channels_last)
            self.params[name] = stacked.requires_grad_(parameter.requires_grad)
        self.buffers: dict[str, torch.Tensor] = {
            name: torch.stack([dict(m.named_buffers())[name] for m in self.models])
            for name, _ in first.named_buffers()}
        self._bind()

    def _bind(self) -> None:
        for index, model in enumerate(self.models):
            for name, stacked in self.params.items():
                module, attribute = _owner(model, name)
                module._parameters[attribute].data = stacked.detach()[index]
            for name, stacked in self.buffers.items():
                module, attribute = _owner(model, name)
                module._buffers[attribute] = stacked[index]

    def trainable(self) -> list[torch.Tensor]:
        """The stacked parameters the optimizer steps, in model.parameters() order (as the solo loop's optimizer)."""
        return [tensor for tensor in self.params.values() if tensor.requires_grad]

    def snapshot_buffers(self) -> dict[str, torch.Tensor]:
        return {name: tensor.clone() for name, tensor in self.buffers.items()}

    def restore_buffers(self, saved: dict[str, torch.Tensor]) -> None:
        for name, tensor in saved.items():
            self.buffers[name].copy_(tensor)

    def release(self) -> None:
        """Give every model its own storage (same values and memory format); the stack is not used after this."""
        for model in self.models:
            for name, _ in list(model.named_parameters()):
                module, attribute = _owner(model, name)
                parameter = module._parameters[attribute]
                parameter.data = parameter.data.clone()
            for name, _ in list(model.named_buffers()):
                module, attribute = _owner(model, name)
                module._buffers[attribute] = module._buffers[attribute].clone()


def packed_network(model: nn.Module, stack: Stack) -> nn.Module:
    """`model`'s module tree with its Linear, Conv2d and BatchNorm2d layers running on the stack's tensors."""
    return _convert(model, "", stack)


def _convert(module: nn.Module, prefix: str, stack: Stack) -> nn.Module:
    name = prefix.rstrip(".") or type(module).__name__
    if parametrize.is_parametrized(module) or module._forward_hooks or module._forward_pre_hooks:
        raise PackError(f"{name} ({type(module).__name__}) has hooks or parametrizations, which packing cannot carry")
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
        raise PackError(f"{name}: dropout draws from the global random stream, so packed models could not match "
                        f"their solo runs")
    params = lambda attribute: stack.params.get(prefix + attribute)  # noqa: E731
    buffers = lambda attribute: stack.buffers.get(prefix + attribute)  # noqa: E731
    if type(module) is nn.Linear:
        return PackedLinear(name, params("weight"), params("bias"))
    if type(module) is nn.Conv2d:
        return PackedConv2d(name, module, params("weight"), params("bias"))
    if type(module) is nn.BatchNorm2d:
        return PackedBatchNorm2d(name, module, params("weight"), params("bias"), buffers("running_mean"),
                                 buffers("running_var"), buffers("num_batches_tracked"))
    own = [n for n, _ in module.named_parameters(recurse=False)] + [n for n, _ in module.named_buffers(recurse=False)]
    if own:
        raise PackError(f"{name} ({type(module).__name__}) holds tensors of its own ({', '.join(own)}); packing "
                        f"supports parameters in Linear, Conv2d and BatchNorm2d layers only")
    clone = copy.copy(module)
    clone._parameters, clone._buffers = {}, {}
    clone._modules = {child_name: None if child is None else _convert(child, f"{prefix}{child_name}.", stack)
                      for child_name, child in module._modules.items()}
    return clone


def pack_inputs(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """K batches (B, C, ...) in the channels layout (B, K·C, ...)."""
    stacked = torch.stack(list(inputs), dim=1)
    return stacked.view(stacked.shape[0], -1, *stacked.shape[3:])


def _differ(packed: torch.Tensor, solo: torch.Tensor) -> bool:
    scale = solo.abs().max().item() + 1.0
    return not torch.isfinite(packed).all() or (packed - solo).abs().max().item() > 1e-3 * scale


@torch.no_grad()
def check_packed_forward(network: nn.Module, stack: Stack, input_shape: tuple[int, ...], shared_batch: bool) -> bool:
    """Refuse (PackError) a network whose packed forward differs from its models'. With `shared_batch`, return
    whether the layers also take one shared, unpacked batch (else it is repeated for every model)."""
    reference = next(iter(stack.params.values()))
    generator = torch.Generator().manual_seed(0)
    shape = (stack.size, PROBE_BATCH, *input_shape)
    own = torch.randn(shape, generator=generator, dtype=torch.float32).to(device=reference.device,
                                                                        dtype=reference.dtype)
    saved = stack.snapshot_buffers()
    was_training = [model.training for model in stack.models]
    shared_works = shared_batch
    try:
        for training in (False, True):  # eval mode: running statistics; train mode: batch statistics
            network.train(training)
            for model in stack.models:
                model.train(training)
            solo = [model(own[index]) for index, model in enumerate(stack.models)]
            stack.restore_buffers(saved)
            try:
                packed = packed_logits(network(pack_inputs(list(own))), stack.size)
            except (PackError, RuntimeError) as error:
                raise PackError(f"{type(stack.models[0]).__name__} cannot be packed: {error}") from None
            stack.restore_buffers(saved)
            for index, logits in enumerate(solo):
                if _differ(packed[index].t(), logits):
                    raise PackError(f"{type(stack.models[0]).__name__} cannot be packed: its forward mixes the "
                                    f"models of a pack (packed output of model {index} differs from its own)")
            shared_works = shared_works and _shared_input_works(network, stack, own[0], saved)
    finally:
        stack.restore_buffers(saved)
        network.train(True)
        for model, training in zip(stack.models, was_training):
            model.train(training)
    return shared_works


def _shared_input_works(network: nn.Module, stack: Stack, batch: torch.Tensor, saved: dict) -> bool:
    solo = [model(batch) for model in stack.models]
    stack.restore_buffers(saved)
    try:
        packed = packed_logits(network(batch), stack.size)
    except (PackError, RuntimeError):
        return False
    finally:
        stack.restore_buffers(saved)
    return not any(_differ(packed[index].t(), logits) for index, logits in enumerate(solo))
