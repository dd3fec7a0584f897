"""Does a ticket run faster? CPU inference of LeNet-300-100 exported sparse, against the same model dense.

Method:
- lenet_300_100 on MNIST shapes (784-300-100-10), θ0 pruned by layerwise magnitude to 90%, 95%
  and 98% sparsity in every layer (output layer included), exported with `export_state` in both
  formats exactly as `lottery export` writes them;
- dense: the plain nn.Module with the zeroed weights (F.linear, i.e. BLAS sgemm/sgemv);
- sparse: `sparse_inference_model`, each Linear a SparseLinear holding its CSR weight (int32
  indices): `torch.addmv(b, W, x)` (CSR matrix-vector) for batch 1, `torch.addmm(b, W, X^T)^T` (CSR x dense)
  for larger batches;
- one thread (torch.set_num_threads(1)), the usual deployment for batch-1 CPU inference, and
  steadier on a shared machine; torch.inference_mode; batch sizes 1 (latency) and 64 (throughput);
- dense and sparse interleaved round by round (lottery/benchmarks/timing.py); the speed-up is
  the median over rounds of dense time / sparse time. Outputs are checked to agree first.
"""
from __future__ import annotations

import logging

import torch

from lottery.benchmarks.result import BenchEntry, Goal
from lottery.benchmarks.timing import interleaved, load_average
from lottery.config import ModelConfig
from lottery.workflows.export import export_state, sparse_inference_model
from lottery.models import build_model
from lottery.pruning.mask import Mask
from lottery.pruning.prune import PruneSpec, prune

logger = logging.getLogger(__name__)

NAME = "sparse_export"
MODEL, INPUT_SHAPE = "lenet_300_100", (1, 28, 28)
SPARSITIES = (0.90, 0.95, 0.98)
BATCH_SIZES = (1, 64)
SEED = 0
METHOD = "SparseLinear: CSR (int32) torch.addmv(b, W, x) at batch 1, torch.addmm(b, W, X.T).T otherwise; 1 thread"
# Goals at batch 64, where the CSR kernel's work shrinks with the weights. At batch 1 the
# network is so small (0.27 MFLOP) that per-call overhead dominates: reported, no goal.
GOALS = {(0.90, 64): Goal(">=", 1.5), (0.95, 64): Goal(">=", 2.0), (0.98, 64): Goal(">=", 2.5)}


def pruned_models(sparsity: float) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(dense model, sparse inference model, facts) for lenet_300_100 at `sparsity`."""
    model = build_model(ModelConfig(name=MODEL), INPUT_SHAPE, 10, SEED).eval()
    mask = prune(model, PruneSpec("magnitude", scope="layerwise", seed=SEED), density=1 - sparsity,
                 mask=Mask.ones(model), input_shape=INPUT_SHAPE).mask
    state = export_state(model.state_dict(), mask, "dense")
    model.load_state_dict(state)
    sparse = sparse_inference_model(model, export_state(state, mask, "sparse"))
    layers = {name: info["density"] for name, info in mask.layer_report().items()}
    return model, sparse, {"density": mask.density(), "layers": layers}


def measure(sparsity: float, batch_size: int, quick: bool) -> BenchEntry:
    dense, sparse, facts = pruned_models(sparsity)
    inputs = torch.randn((batch_size, *INPUT_SHAPE), generator=torch.Generator().manual_seed(SEED))
    with torch.inference_mode():
        difference = (dense(inputs) - sparse(inputs)).abs().max().item()
        if difference > 1e-4:
            raise RuntimeError(f"sparse and dense outputs differ by {difference}")
        calls = (200 if batch_size == 1 else 20) // (4 if quick else 1)
        timings = interleaved({"dense": lambda: dense(inputs), "sparse": lambda: sparse(inputs)},
                              rounds=5 if quick else 31, warmup_rounds=1, calls_per_sample=calls)
    speedup = 1.0 / timings.ratio("sparse", "dense")
    low, high = timings.ratio_spread("sparse", "dense")
    return BenchEntry(
        name=f"{NAME}_speedup_s{round(sparsity * 100)}_b{batch_size}", value=speedup, unit="x",
        goal=GOALS.get((sparsity, batch_size)),
        details={"sparsity": sparsity, "batch_size": batch_size, "threads": 1, "max_abs_difference": difference,
                 "dense_us": timings.median("dense") * 1e6, "sparse_us": timings.median("sparse") * 1e6,
                 "speedup_range": [1.0 / high, 1.0 / low], "method": METHOD,
                 **facts, **timings.summary()},
    )


def run(quick: bool) -> list[BenchEntry]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        entries = [measure(s, b, quick) for s in SPARSITIES for b in BATCH_SIZES]
    finally:
        torch.set_num_threads(threads)
    for entry in entries:
        entry.details["load_average"] = load_average()
        logger.info("%s: %.2fx (dense %.1f us, sparse %.1f us)", entry.name, entry.value,
                    entry.details["dense_us"], entry.details["sparse_us"])
    return entries
