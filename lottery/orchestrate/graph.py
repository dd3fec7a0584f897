"""The experiment as a graph of stages: per seed θ0, θk, the levels in order, and every declared baseline and
branch, each depending only on what it reads.

Baselines wait for nothing but θ0 (or θk): their densities are the ticket's level densities, known exactly
before any level trains (lottery.workflows.baselines.ticket_densities). Branches wait for their level's mask.
With experiment.evaluate, each trained stage is followed by its robustness evaluation. Seeds are independent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lottery.config import Config
from lottery.run.stage import Stage
from lottery.workflows.baselines import baseline_stage, ticket_densities
from lottery.workflows.branches import BranchStage
from lottery.workflows.evaluate import evaluation_stages
from lottery.workflows.ticket import ticket_stages


@dataclass(frozen=True)
class Node:
    """One stage of one seed."""

    seed: int
    stage: Stage

    @property
    def key(self) -> str:
        return f"seed_{self.seed}/{self.stage.name}"

    @property
    def kind(self) -> str:
        return self.stage.kind


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)  # in an order that respects the dependencies
    needs: dict[Node, tuple[Node, ...]] = field(default_factory=dict)

    def add(self, node: Node, needs: tuple[Node, ...]) -> None:
        missing = [need for need in needs if need not in self.needs]
        if missing:
            raise ValueError(f"{node.key} needs {', '.join(n.key for n in missing)}, which come later or not at all")
        if node not in self.needs:
            self.nodes.append(node)
            self.needs[node] = needs

    def dependents(self) -> dict[Node, list[Node]]:
        found: dict[Node, list[Node]] = {node: [] for node in self.nodes}
        for node, needs in self.needs.items():
            for need in needs:
                found[need].append(node)
        return found

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.kind] = counts.get(node.kind, 0) + 1
        return counts


def seeds_of(config: Config) -> list[int]:
    return list(config.experiment.seeds) or [config.seed]


def seed_stages(config: Config, model) -> list[Stage]:
    """Every stage one seed runs: the ticket, then its baselines, then its branches."""
    plan = config.experiment
    stages = list(ticket_stages(config))
    densities = list(plan.baselines.densities) or ticket_densities(config, model)
    stages += [baseline_stage(config, method, density, plan.baselines.at)
               for method in plan.baselines.methods for density in densities]
    stages += [BranchStage(name, level) for name, levels in plan.branches.items() for level in levels]
    return stages + evaluation_stages(config, stages)


def experiment_graph(config: Config, model) -> Graph:
    """The whole experiment; `model` is θ0's architecture (any seed), for the exact baseline densities."""
    graph = Graph()
    for seed in seeds_of(config):
        for stage in seed_stages(config, model):
            graph.add(Node(seed, stage), tuple(Node(seed, need) for need in stage.needs(config)))
    return graph


def describe(graph: Graph) -> str:
    """The stages, what each waits for, and how many there are (`lottery plan`)."""
    lines = []
    for node in graph.nodes:
        needs = ", ".join(need.stage.name for need in graph.needs[node]) or "-"
        lines.append(f"  {node.key:<58} after {needs}")
    counts = ", ".join(f"{count} {kind}" for kind, count in graph.counts().items())
    seeds = sorted({node.seed for node in graph.nodes})
    lines.append(f"{len(graph.nodes)} stages over {len(seeds)} seed(s) ({counts}); nothing was run")
    return "\n".join(lines)
