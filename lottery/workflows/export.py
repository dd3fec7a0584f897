"""`lottery export`: a level's trained weights as a standalone file that needs no framework masks.

    lottery export RUN_DIR --level N --format {dense,sparse} --out FILE

dense:  a plain state dict (name -> tensor), pruned weights exactly 0:
        `model.load_state_dict(torch.load(FILE))` works on the plain model.
sparse: {"lottery_export": 1, "layout": "sparse", "shapes": {...}, "meta": {...}, "state_dict": {...}}
        where every pruned conv/linear weight is a CSR tensor (rows = output units, conv kernels
        flattened, int32 indices) and everything else stays dense. `load_exported(FILE)` turns
        it back into a plain state dict, bit for bit; `sparse_inference_model` runs linear
        layers straight from CSR with torch.sparse (see lottery/benchmarks/sparse_export.py).
"""
from __future__ import annotations

import copy
import contextlib
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from lottery.errors import NotFoundError
from lottery.pruning.mask import Mask, MaskError
from lottery.run.files import atomic_torch_save, torch_load
from lottery.run.layout import RunLayout

logger = logging.getLogger(__name__)

FORMATS = ("dense", "sparse")
MARKER = "lottery_export"
VERSION = 1


# -- formats -------------------------------------------------------------------------------------

def masked_state(state: dict, mask: Mask) -> dict:
    """The state dict with every pruned weight exactly 0 (masks named by parameter, as in Mask)."""
    missing = [name for name in mask.names if name not in state]
    if missing:
        raise MaskError(f"mask layers not in the weights: {', '.join(missing)}")
    wrong = [name for name in mask.names if tuple(state[name].shape) != tuple(mask[name].shape)]
    if wrong:
        raise MaskError(f"mask shapes differ from the weights for {', '.join(wrong)}")
    return {name: tensor.masked_fill(~mask[name], 0) if name in mask else tensor.clone()
            for name, tensor in state.items()}


def to_csr(tensor: torch.Tensor) -> torch.Tensor:
    """A conv or linear weight as a CSR matrix (rows = output units) with int32 indices."""
    with _quiet_sparse():
        matrix = tensor.detach().reshape(tensor.shape[0], -1).to_sparse_csr()
        small = matrix.values().numel() < 2 ** 31 and max(matrix.shape) < 2 ** 31
        index_type = torch.int32 if small else torch.int64
        return torch.sparse_csr_tensor(matrix.crow_indices().to(index_type), matrix.col_indices().to(index_type),
                                       matrix.values(), matrix.shape, check_invariants=True)


@contextlib.contextmanager
def _quiet_sparse():
    """torch warns that CSR support is beta and that loading validates invariants: both expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
        yield


def export_state(state: dict, mask: Mask, layout: str, meta: dict | None = None) -> dict:
    """What `lottery export` writes, as an object: a plain dict (dense) or the sparse container."""
    if layout not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {layout!r}")
    dense = masked_state(state, mask)
    if layout == "dense":
        return dense
    return {
        MARKER: VERSION, "layout": "sparse", "meta": dict(meta or {}),
        "shapes": {name: list(dense[name].shape) for name in mask.names},
        "state_dict": {name: to_csr(tensor) if name in mask else tensor for name, tensor in dense.items()},
    }


def load_exported(source) -> dict:
    """A plain (dense) state dict from an exported file or object, whichever format."""
    exported = source
    if isinstance(source, (str, Path)):
        with _quiet_sparse():
            exported = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(exported, dict):
        raise ValueError(f"{source}: not an exported state dict")
    if MARKER not in exported:
        return dict(exported)
    if exported[MARKER] != VERSION or exported.get("layout") != "sparse":
        raise ValueError(f"{source}: unsupported export version {exported[MARKER]} / layout {exported.get('layout')}")
    shapes = exported["shapes"]
    return {name: tensor.to_dense().reshape(shapes[name]) if name in shapes else tensor
            for name, tensor in exported["state_dict"].items()}


# -- sparse inference ----------------------------------------------------------------------------

class SparseLinear(nn.Module):
    """y = x W^T + b with W in CSR: torch.addmv for one example, else torch.addmm of the sparse
    weight and the transposed input (torch.sparse's CSR kernels)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight if weight.layout == torch.sparse_csr else to_csr(weight))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("bias_column", None if bias is None else self.bias.reshape(-1, 1), persistent=False)
        self.in_features, self.out_features = self.weight.shape[1], self.weight.shape[0]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() == 2 and inputs.shape[0] == 1 and self.bias is not None:
            # One example: a single sparse matrix-vector product with the bias folded in.
            return torch.addmv(self.bias, self.weight, inputs[0]).unsqueeze(0)
        flat = inputs.reshape(-1, self.in_features)
        if self.bias is None:
            out = torch.sparse.mm(self.weight, flat.t()).t()
        else:
            out = torch.addmm(self.bias_column, self.weight, flat.t()).t()
        return out.reshape(*inputs.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}"


def sparse_inference_model(model: nn.Module, exported: dict) -> nn.Module:
    """A copy of `model` holding the exported weights, its pruned Linear layers as SparseLinear."""
    model = copy.deepcopy(model)
    model.load_state_dict(load_exported(exported))
    sparse = exported["state_dict"] if MARKER in exported else {}
    for name, module in list(model.named_modules()):
        key = f"{name}.weight"
        if isinstance(module, nn.Linear) and key in sparse and sparse[key].layout == torch.sparse_csr:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, SparseLinear(sparse[key], module.bias))
    return model.eval()


# -- the command ---------------------------------------------------------------------------------

def storage_bytes(exported: dict) -> int:
    """Bytes of tensor data (values and indices) in an export."""
    tensors = exported["state_dict"].values() if MARKER in exported else exported.values()
    total = 0
    for tensor in tensors:
        if tensor.layout == torch.sparse_csr:
            parts = (tensor.crow_indices(), tensor.col_indices(), tensor.values())
            total += sum(part.numel() * part.element_size() for part in parts)
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def export_level(run_dir, level: int, layout: str, out) -> dict:
    """Write level `level` of a run as `layout` to `out`, check the round trip, return a summary."""
    run_dir, out = Path(run_dir), Path(out)
    level_dir = RunLayout.at(run_dir).level_dir(level)
    for name in ("final.pt", "mask.pt"):
        if not (level_dir / name).is_file():
            raise NotFoundError(f"{level_dir / name} does not exist: is {run_dir} a run directory "
                                f"whose level {level} has finished (lottery ticket)?")
    state, mask = torch_load(level_dir / "final.pt", what="level weights"), Mask.load(level_dir / "mask.pt")
    try:
        exported = export_state(state, mask, layout, {"run_dir": str(run_dir), "level": level,
                                                      "density": mask.density()})
    except MaskError as error:
        raise MaskError(f"{level_dir}: {error}") from None
    atomic_torch_save(out, exported)
    expected, loaded = masked_state(state, mask), load_exported(out)
    if expected.keys() != loaded.keys() or not all(torch.equal(expected[k], loaded[k]) for k in expected):
        raise RuntimeError(f"{out}: the export does not load back to the same weights")
    dense_bytes = sum(t.numel() * t.element_size() for t in expected.values())
    summary = {"out": str(out), "format": layout, "level": level, "density": mask.density(),
               "tensor_bytes": storage_bytes(exported), "dense_tensor_bytes": dense_bytes}
    logger.info("exported level %d (density %.4f) as %s to %s: %d of %d dense bytes", level, mask.density(),
                layout, out, summary["tensor_bytes"], dense_bytes)
    return summary
