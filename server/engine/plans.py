"""How a batcher runs a batch, chosen by measurement: one forward pass or item by item, and on how many intra-op
threads (`server.engine.batching` keeps one `Pays` per group key and batch size)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Plan:
    """One way to run a batch: as one forward pass or item by item (`alone`), on how many intra-op threads of the
    batcher's worker thread (0: as they are; on CUDA the host threads hardly matter)."""

    alone: bool = False
    threads: int = 0

    def next_to(self, other: Plan) -> bool:
        """One change away from `other`: batched or alone, or the thread count."""
        return (self.alone != other.alone) + (self.threads != other.threads) == 1


@dataclass
class Pays:
    """Which way of running batches of one group key and size pays: the seconds per item of each `Plan` run (moving
    averages of the batcher's own passes; a lone request times running alone). Batches run as the first plan
    offered until it is timed; after `EXPLORE_AFTER` passes, each plan one change away from the fastest so far
    runs once (a walk to the fastest plan that never tries the far corner of a slow one: for a large model, item
    by item on one thread); from then on the fastest runs, and every `EXPLORE_EVERY` passes the least recently
    run of its neighbours, so the choice follows the load and the machine."""

    EXPLORE_AFTER = 4
    EXPLORE_EVERY = 64

    seconds: dict[Plan, float] = field(default_factory=dict)  # per item
    last_run: dict[Plan, int] = field(default_factory=dict)  # pass number
    passes: int = 0

    def choose(self, plans: Sequence[Plan], *, try_threads: bool = True) -> Plan:
        """The plan to run next; `try_threads` False: no other thread count than the fastest's is tried now."""
        self.passes += 1
        if plans[0] not in self.seconds:
            return plans[0]
        best = self.best(plans)
        near = [p for p in plans if p.next_to(best) and (try_threads or p.threads == best.threads)]
        untimed = [p for p in near if p not in self.seconds]
        if untimed and self.passes >= self.EXPLORE_AFTER:
            return untimed[0]
        if near and self.passes % self.EXPLORE_EVERY == 0:
            return min(near, key=lambda p: self.last_run.get(p, 0))
        return best

    def best(self, plans: Sequence[Plan]) -> Plan:
        """The fastest of `plans` timed so far (the first of them when none is)."""
        return min((p for p in plans if p in self.seconds), key=self.seconds.__getitem__, default=plans[0])

    def record(self, plan: Plan, *, per_item_s: float) -> None:
        self.last_run[plan] = self.passes
        old = self.seconds.get(plan)
        self.seconds[plan] = per_item_s if old is None else 0.8 * old + 0.2 * per_item_s
