"""Masks over the prunable weights: which weights are prunable, apply, enforce, report, save/load.

A Mask maps parameter names to bool tensors (True = kept), ordered like the model's
parameters. On disk it is bit-packed (one bit per prunable weight, zlib when that is smaller)
behind a small zlib-compressed JSON header (names, shapes, SHA-256 of the packed bits), and
written atomically.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from lottery.errors import CorruptFileError, LotteryError
from lottery.run.files import atomic_write_bytes

OUTPUT = "output"  # the special pattern: the last prunable layer
PRUNABLE_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
MAGIC = b"LOTMASK\x00"
VERSION = 1
_PREFIX = struct.Struct("<8sHI")  # magic, version, header length


class MaskError(LotteryError):
    """A mask that does not fit: bad file, wrong names or shapes, a pattern that matches no layer."""


class MaskFileError(MaskError, CorruptFileError):
    """A mask file that is truncated, corrupted or not a mask file at all."""


def matching_names(names: list[str], patterns: Iterable[str], output_name: str | None, what: str) -> list[str]:
    """The names matched by fnmatch `patterns`; OUTPUT matches `output_name`. Unmatched patterns are errors."""
    matched: set[str] = set()
    for pattern in patterns:
        hits = {output_name} if pattern == OUTPUT and output_name else set(fnmatch.filter(names, pattern))
        if not hits:
            raise MaskError(f"{what} pattern {pattern!r} matches no parameter; candidates: {', '.join(names)}")
        matched |= hits
    return [name for name in names if name in matched]


def join_flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened and joined: a view when they already tile one buffer in order, else a copy.

    Selection and SynFlow work on one flat tensor per pass: one big operation instead of one
    per layer, which matters most when the CPU is shared (every parallel op waits for all threads).
    """
    first = tensors[0]
    offset, size = first.storage_offset(), 0
    for tensor in tensors:
        consecutive = (tensor.is_contiguous() and tensor.dtype == first.dtype and tensor.device == first.device
                       and tensor.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
                       and tensor.storage_offset() == offset + size)
        if not consecutive:
            return torch.cat([t.reshape(-1) for t in tensors])
        size += tensor.numel()
    return first.as_strided((size,), (1,), offset)


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameter names masks use: through DistributedDataParallel and torch.compile."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (
            model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else None)
        if inner is None:
            return model
        model = inner


def prunable_parameters(model: nn.Module, ignore: Iterable[str] = (),
                        include: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """The `.weight` of every conv and linear layer, minus `ignore`, plus `include` (fnmatch patterns).

    The pattern "output" means the last conv/linear weight. Order follows model.named_parameters().
    """
    model = unwrap(model)
    weights = {f"{name}.weight" for name, module in model.named_modules()
               if isinstance(module, PRUNABLE_LAYERS) and getattr(module, "weight", None) is not None}
    parameters = dict(model.named_parameters())
    default = [name for name in parameters if name in weights]
    output_name = default[-1] if default else None
    chosen = set(default) | set(matching_names(list(parameters), include, output_name, "prune.include"))
    chosen -= set(matching_names(list(parameters), ignore, output_name, "prune.ignore"))
    return {name: parameter for name, parameter in parameters.items() if name in chosen}


class Mask:
    """name -> bool tensor (True = kept), in model order."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self._tensors = {name: torch.as_tensor(tensor).to(torch.bool) for name, tensor in tensors.items()}

    @classmethod
    def ones(cls, model: nn.Module, ignore: Iterable[str] = (), include: Iterable[str] = ()) -> "Mask":
        parameters = prunable_parameters(model, ignore, include)
        return cls({name: torch.ones_like(p, dtype=torch.bool) for name, p in parameters.items()})

    # -- container --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._tensors)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def items(self):
        return self._tensors.items()

    def to(self, device) -> "Mask":
        return Mask({name: tensor.to(device) for name, tensor in self._tensors.items()})

    def clone(self) -> "Mask":
        return Mask({name: tensor.clone() for name, tensor in self._tensors.items()})

    def equals(self, other: "Mask") -> bool:
        return self.names == other.names and all(
            torch.equal(self[name].cpu(), other[name].cpu()) for name in self.names)

    def __repr__(self) -> str:
        kept, total = self.counts()
        return f"Mask({len(self)} layers, {kept}/{total} kept, density {self.density():.6g})"

    def flat(self) -> torch.Tensor:
        """All layers' flags as one flat tensor (a view when they share one buffer)."""
        return join_flat(list(self._tensors.values())) if self._tensors else torch.zeros(0, dtype=torch.bool)

    @classmethod
    def from_flat(cls, flat: torch.Tensor, like: "Mask") -> "Mask":
        """Per-layer views of one flat bool tensor, laid out like `like`."""
        sizes = [tensor.numel() for tensor in like._tensors.values()]
        return cls({name: part.view(like[name].shape) for name, part in zip(like.names, flat.split(sizes))})

    # -- model operations -------------------------------------------------------------------
    def parameters_of(self, model: nn.Module) -> list[nn.Parameter]:
        """The model's parameters for this mask, in mask order; MaskError naming any that do not fit."""
        self.check_fits(model)
        parameters = dict(unwrap(model).named_parameters())
        return [parameters[name] for name in self.names]

    def check_fits(self, model: nn.Module) -> None:
        model = unwrap(model)
        parameters = dict(model.named_parameters())
        missing = [name for name in self.names if name not in parameters]
        if missing:
            raise MaskError(f"mask names not in the model {type(model).__name__}: {', '.join(missing)}")
        wrong = [f"{name} (mask {tuple(self[name].shape)}, model {tuple(parameters[name].shape)})"
                 for name in self.names if self[name].shape != parameters[name].shape]
        if wrong:
            raise MaskError(f"mask shapes differ from the model: {'; '.join(wrong)}")

    def apply(self, model: nn.Module) -> None:
        """Set the pruned weights to exactly 0, in place."""
        with torch.no_grad():
            for name, parameter in zip(self.names, self.parameters_of(model)):
                parameter.masked_fill_(~self[name].to(parameter.device), 0)

    def enforcer(self, model: nn.Module) -> Callable[[], None]:
        """A closure to call after every optimizer.step(): one fused multiply zeroes the pruned weights.

        Zeroing after each step keeps pruned weights exactly 0 whatever the optimizer's state
        (momentum, Adam moments, weight decay), so no per-forward masking is needed. Create it
        after moving the model to its device and dtype.
        """
        parameters = self.parameters_of(model)
        factors = [self[name].to(device=p.device, dtype=p.dtype) for name, p in zip(self.names, parameters)]

        def enforce() -> None:
            if parameters:
                with torch.no_grad():
                    torch._foreach_mul_(parameters, factors)

        return enforce

    # -- reports ----------------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        """(kept, total) over all layers."""
        kept = sum(int(torch.count_nonzero(tensor)) for tensor in self._tensors.values())
        return kept, sum(tensor.numel() for tensor in self._tensors.values())

    def density(self) -> float:
        kept, total = self.counts()
        return kept / total if total else 1.0

    def layer_report(self) -> dict[str, dict]:
        report = {}
        for name, tensor in self._tensors.items():
            kept, total = int(torch.count_nonzero(tensor)), tensor.numel()
            report[name] = {"total": total, "kept": kept, "density": kept / total if total else 1.0}
        return report

    def collapsed(self) -> list[str]:
        """Layers with no weight left: they cut the network."""
        return [name for name, tensor in self._tensors.items() if tensor.numel() and not tensor.any()]

    # -- disk -------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Bit-packed with a checksummed header, written to a temporary file then renamed."""
        flat = self.flat().cpu()
        packed = np.packbits(flat.numpy()).tobytes()
        compressed = zlib.compress(packed, 9)
        codec, payload = ("zlib", compressed) if len(compressed) < len(packed) else ("raw", packed)
        header = zlib.compress(json.dumps({
            "names": self.names, "shapes": [list(t.shape) for t in self._tensors.values()],
            "bits": int(flat.numel()), "codec": codec, "payload": len(payload),
            "sha256": hashlib.sha256(packed).hexdigest(),
        }, separators=(",", ":")).encode(), 9)
        atomic_write_bytes(path, _PREFIX.pack(MAGIC, VERSION, len(header)) + header + payload)

    @classmethod
    def load(cls, path, model: nn.Module | None = None, ignore: Iterable[str] | None = None,
             include: Iterable[str] | None = None) -> "Mask":
        """Read a saved mask; MaskError on a bad, truncated or corrupted file.

        With `model`, every mask name must be a parameter of the same shape. With `ignore` or
        `include` too, the names must be exactly the model's prunable set for those patterns.
        """
        mask = cls(_read_tensors(Path(path)))
        if model is not None:
            try:
                mask.check_fits(model)
            except MaskError as error:
                raise MaskError(f"{path}: {error}") from None
            if ignore is not None or include is not None:
                expected = list(prunable_parameters(model, ignore or (), include or ()))
                _check_same_names(path, mask.names, expected)
        return mask


def _check_same_names(path, names: list[str], expected: list[str]) -> None:
    extra = [name for name in names if name not in expected]
    missing = [name for name in expected if name not in names]
    if extra or missing:
        raise MaskError(f"{path}: mask layers differ from the model's prunable layers; "
                        f"extra in mask: {extra or 'none'}; missing from mask: {missing or 'none'}")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MaskError(f"mask file {path} does not exist")
    data = path.read_bytes()
    if len(data) < _PREFIX.size:
        raise MaskFileError(f"mask file {path} is truncated ({len(data)} bytes)")
    magic, version, header_length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise MaskFileError(f"{path} is not a lottery mask file (bad magic {magic!r})")
    if version != VERSION:
        raise MaskFileError(f"mask file {path} has version {version}; this code reads version {VERSION}")
    start = _PREFIX.size + header_length
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size:start]).decode())
        names, shapes, bits = header["names"], header["shapes"], int(header["bits"])
        codec, payload_length, checksum = header["codec"], int(header["payload"]), header["sha256"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, zlib.error) as error:
        raise MaskFileError(f"mask file {path} has a corrupted or truncated header ({error})") from None
    payload = data[start:]
    if len(payload) != payload_length:
        raise MaskFileError(f"mask file {path} is truncated or has trailing bytes: "
                            f"payload {len(payload)} bytes, header says {payload_length}")
    try:
        packed = zlib.decompress(payload) if codec == "zlib" else payload
    except zlib.error as error:
        raise MaskFileError(f"mask file {path} is corrupted ({error})") from None
    if hashlib.sha256(packed).hexdigest() != checksum:
        raise MaskFileError(f"mask file {path} is corrupted: checksum mismatch")
    sizes = [int(np.prod(shape)) for shape in shapes]
    if sum(sizes) != bits or len(names) != len(shapes) or len(packed) * 8 < bits:
        raise MaskFileError(f"mask file {path} has an inconsistent header: {sum(sizes)} weights vs {bits} bits")
    flat = torch.from_numpy(np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=bits).astype(bool))
    tensors, offset = {}, 0
    for name, shape, size in zip(names, shapes, sizes):
        tensors[name] = flat[offset:offset + size].reshape(shape).clone()
        offset += size
    return tensors
