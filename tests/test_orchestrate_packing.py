"""run.pack in the orchestrator: packs form from ready stages of one start step, and a stage's results do not depend
on what it was packed with; packed and unpacked agree within one test example, with the same level masks."""
from __future__ import annotations

import pytest

from lottery.config import load_config
from lottery.orchestrate.experiment import run_experiment
from lottery.orchestrate.graph import experiment_graph
from lottery.orchestrate.packing import pack_key, take_pack
from lottery.orchestrate.scheduler import Scheduler
from lottery.orchestrate.worker import Outcome
from lottery.run.context import make_model
from lottery.run.layout import RunLayout
from tests.test_orchestrate import OVERRIDES, fingerprint

PACK = [*OVERRIDES, "experiment.baselines.methods=[magnitude, snip, random]"]


def digits(tmp_path, *extra):
    return load_config("digits", [*PACK, f"run.root={tmp_path / 'runs'}", *extra])


@pytest.fixture(scope="module")
def packed_runs(tmp_path_factory):
    """Unpacked, packs of 2 and of up to 5 in one process, and packs of up to 5 over two workers (every pack the
    driver takes there is recorded: ready stages that could pack together, idle slots, the pack's size)."""
    found, taken = {}, []

    def recording(ready, keys, size, free_slots=1):
        pack = take_pack(ready, keys, size, free_slots)
        taken.append((sum(keys[node] == keys[ready[0]] for node in ready), free_slots, len(pack)))
        return pack

    for name, pack, workers in (("0", "0", 1), ("2", "2", 1), ("5", "5", 1), ("5 on 2 workers", "5", 2)):
        with pytest.MonkeyPatch.context() as patch:
            if workers == 2:
                patch.setattr("lottery.orchestrate.packing.take_pack", recording)
            outcome = run_experiment(digits(tmp_path_factory.mktemp(f"pack{pack}"), f"run.pack={pack}",
                                            f"run.workers={workers}"), "test")
        assert not outcome.failed
        found[name] = outcome
    found["taken"] = taken
    return found


def test_packs_are_shared_over_the_idle_workers(packed_runs):
    """A pack is at most its share of the stages it could pack with, over the slots idle now (the 2-worker run)."""
    two_workers = [entry for entry in packed_runs["taken"] if entry[1] == 2]
    assert two_workers, "the driver never saw both slots idle"
    for mates, idle, size in packed_runs["taken"]:
        assert size <= max(1, -(-mates // max(idle, 1))), (mates, idle, size)
    assert any(mates > size for mates, idle, size in two_workers if idle == 2)  # sharing split a would-be pack


def test_results_do_not_depend_on_the_pack_size(packed_runs):
    assert fingerprint(packed_runs["2"].directory) == fingerprint(packed_runs["5"].directory)


@pytest.mark.parametrize("packed_name", ["5", "5 on 2 workers"])
def test_packed_and_unpacked_agree_within_one_test_example_with_the_same_level_masks(packed_runs, packed_name):
    unpacked, packed = packed_runs["0"], packed_runs[packed_name]
    one_example = 1 / 360  # digits' test set
    rows = {node.key: outcome.row for node, outcome in unpacked.outcomes.items() if outcome.row}
    packed_rows = {node.key: outcome.row for node, outcome in packed.outcomes.items() if outcome.row}
    assert rows.keys() == packed_rows.keys()
    for key, row in rows.items():
        assert abs(row["final_test_acc"] - packed_rows[key]["final_test_acc"]) <= one_example + 1e-12, key
    for seed in (0, 1):
        for level in (1, 2):  # masks pruned from packed-trained weights
            ours = RunLayout.at(packed.directory / f"seed_{seed}").level_dir(level) / "mask.pt"
            theirs = RunLayout.at(unpacked.directory / f"seed_{seed}").level_dir(level) / "mask.pt"
            assert ours.read_bytes() == theirs.read_bytes(), (seed, level)


def test_packs_take_stages_of_one_start_step_and_levels_of_every_seed(tmp_path):
    config = digits(tmp_path, "ticket.rewind_step=2it", "experiment.baselines.at=init")
    from lottery.workflows.preflight import check_ticket

    graph = experiment_graph(config, make_model(config, check_ticket(config)))
    keys = {node: pack_key(node, config, rewind_step=2) for node in graph.nodes}
    scheduler = Scheduler(graph)
    for node in graph.nodes:  # pretend θ0, θk and level 0 of both seeds finished
        if node.kind in ("init", "rewind"):
            scheduler.finish(node, Outcome(node.key, "done"))
    ready = scheduler.ready()
    assert [node.key for node in ready[:2]] == ["seed_0/level_00", "seed_1/level_00"]  # chains advance together
    pack = take_pack(ready, keys, 8)
    assert [node.key for node in pack] == ["seed_0/level_00", "seed_1/level_00"]  # baselines start at 0, not k
    baselines = [node for node in ready if node.kind == "baseline"]
    assert len(take_pack(baselines, keys, 4)) == 4 and all(keys[n] == (0, None) for n in baselines)
    assert len(baselines) == 12  # 3 methods x 2 densities x 2 seeds, shared out over the idle workers:
    assert len(take_pack(baselines, keys, 8, free_slots=2)) == 6 and len(take_pack(baselines[6:], keys, 8)) == 6
    assert len(take_pack(baselines, keys, 8, free_slots=5)) == 3 and len(take_pack(baselines, keys, 2, 2)) == 2
    assert keys[next(node for node in graph.nodes if node.kind == "init")] is None
