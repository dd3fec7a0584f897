"""Dependency bookkeeping shared by the executors: which stages are ready, which are blocked by a failure.

A stage is ready when everything it needs finished (ran here, or had run before). When a stage fails, every
stage that depends on it, directly or not, is blocked and not run; the others go on.
"""
from __future__ import annotations

import time

from lottery.orchestrate.graph import Graph, Node
from lottery.orchestrate.worker import Outcome

FINISHED = ("done", "skipped")
CHAIN = ("init", "rewind", "level")  # the critical path of a seed: run it first when several stages are ready
BUSY_RETRY_SECONDS = 0.5


class Scheduler:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.order = {node: index for index, node in enumerate(graph.nodes)}
        self.dependents = graph.dependents()
        self.outcomes: dict[Node, Outcome] = {}
        self.running: set[Node] = set()
        self.retry_at: dict[Node, float] = {}  # busy elsewhere: try again after this time

    def ready(self) -> list[Node]:
        """Nodes whose needs have finished, not started yet: the critical path first (every seed's chain at the same
        depth together, so levels of different seeds can train in one pack), then graph order."""
        now = time.monotonic()
        found = [node for node in self.graph.nodes
                 if node not in self.outcomes and node not in self.running and self.retry_at.get(node, 0) <= now
                 and all(self.outcomes.get(need) is not None and self.outcomes[need].status in FINISHED
                         for need in self.graph.needs[node])]
        return sorted(found, key=lambda node: (node.kind not in CHAIN, self._depth(node), self.order[node]))

    @staticmethod
    def _depth(node: Node) -> int:
        """θ0, θk, then level L: how far along its seed's chain a stage is (0 for the rest)."""
        if node.kind not in CHAIN:
            return 0
        return CHAIN.index(node.kind) + (node.stage.level if node.kind == "level" else 0)

    def start(self, node: Node) -> None:
        self.running.add(node)

    def finish(self, node: Node, outcome: Outcome) -> list[tuple[Node, Outcome]]:
        """Record an outcome; returns the nodes newly blocked by it (already recorded as blocked)."""
        self.running.discard(node)
        if outcome.status == "busy":
            self.retry_at[node] = time.monotonic() + BUSY_RETRY_SECONDS
            return []
        self.outcomes[node] = outcome
        if outcome.status != "failed":
            return []
        blocked, stack = [], list(self.dependents[node])
        while stack:
            other = stack.pop()
            if other in self.outcomes:
                continue
            self.outcomes[other] = Outcome(other.key, "blocked", error=f"needs {node.key}, which failed")
            blocked.append((other, self.outcomes[other]))
            stack.extend(self.dependents[other])
        return blocked

    @property
    def complete(self) -> bool:
        return len(self.outcomes) == len(self.graph.nodes)

    def next_wakeup(self) -> float:
        """Seconds until a busy stage may be retried (0 if none waits)."""
        waiting = [at for node, at in self.retry_at.items() if node not in self.outcomes and node not in self.running]
        return max(0.0, min(waiting) - time.monotonic()) if waiting else 0.0
