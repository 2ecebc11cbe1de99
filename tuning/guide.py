"""Model-guided screening: predict every configuration of the space and pick the best guesses to try first.

Combines the cache simulator (miss rate of a cache size and eviction policy under the trial's own
sampler orders) with the analytic wait model (probe numbers -> data-wait fraction). A whole space
of a few hundred points is screened in about a second, because the simulator runs once per
(cache size, eviction) pair and the prefetch-window simulation is memoised.

Only predictions the model trusts (their band of optimistic to pessimistic probe readings within
``TRUST_BAND``, see :mod:`delibench.tuning.model`) are ever enqueued as guesses: where the probe
could not pin the environment down, the tuner's sampler explores instead of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from delibench.errors import UsageError
from delibench.tuning.model import Demand, LinkEstimate, WaitPrediction, predict_wait
from delibench.tuning.simulator import CacheSimulator
from delibench.tuning.space import SearchSpace, TuneConfig

__all__ = ["Guess", "Predictor", "assess_predictions", "pareto_front"]


@dataclass(frozen=True, slots=True)
class Guess:
    """A configuration with the model's prediction for it.

    Attributes:
        config: The configuration.
        prediction: Predicted wait fraction, supply and bound.
        miss_rate: Simulated miss rate of the measured epoch.
    """

    config: TuneConfig
    prediction: WaitPrediction
    miss_rate: float


def assess_predictions(predictions: list[WaitPrediction]) -> tuple[bool, str]:
    """Whether a model whose predictions over a space are ``predictions`` should pick first trials.

    Untrusted when under half of them are trusted (the probe's readings leave the answer open), or
    when over a third are untrusted because the host was busy with other work when probed: there
    the CPU-side figures do not repeat (on the shared 2-core check host one config's wait moved by
    0.3 between two runs), and the sampler explores instead.
    """
    n = len(predictions)
    if n == 0:
        return False, "no predictions"
    untrusted = [p for p in predictions if not p.trusted]
    busy = [p for p in untrusted if "busy with other work" in p.uncertain_reason]
    if 3 * len(busy) > n:
        return False, f"{len(busy)} of {n} predictions uncertain: the host was busy with other work when probed"
    if 2 * len(untrusted) > n:
        reasons = sorted({p.uncertain_reason.split("(", 1)[-1].rstrip(")") for p in untrusted})
        return False, f"{len(untrusted)} of {n} predictions uncertain ({'; '.join(reasons[:3])})"
    return True, f"{n - len(untrusted)} of {n} predictions trusted"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when both coordinates are minimised (ties keep the first)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    front, best_second = [], float("inf")
    for i in order:
        if points[i][1] < best_second:
            front.append(i)
            best_second = points[i][1]
    return front


class Predictor:
    """Predicts the data-wait fraction of configurations in one environment.

    Args:
        link: Probe numbers.
        demand: Batch size, step time, default workers.
        simulator: Replays the trial's sampler orders; its last epoch is the measured one.
    """

    def __init__(self, link: LinkEstimate, demand: Demand, simulator: CacheSimulator) -> None:
        self.link = link
        self.demand = demand
        self.simulator = simulator

    def miss_rate(self, config: TuneConfig) -> float:
        """Simulated miss rate of the last (measured) epoch of a trial."""
        return self.simulator.run(config.cache_size_bytes, config.eviction).last_epoch_miss_rate

    def guess(self, config: TuneConfig) -> Guess:
        """The prediction for one configuration."""
        miss = self.miss_rate(config)
        return Guess(config, predict_wait(config, self.link, self.demand, miss), miss)

    def screen(self, space: SearchSpace) -> list[Guess]:
        """Predictions for every configuration of ``space``."""
        return [self.guess(c) for c in space.grid()]

    def assess(self, space: SearchSpace) -> tuple[bool, str]:
        """Whether the model is fit to pick first trials in ``space``, and a one-line reason (see :func:`assess_predictions`)."""
        return assess_predictions([g.prediction for g in self.screen(space)])

    def best_guesses(self, space: SearchSpace, objective: str, *, k: int = 3, min_au: float | None = None) -> list[Guess]:
        """The ``k`` configurations most worth measuring first.

        * ``wait``: lowest predicted wait; among near-ties (within 0.005) the cheapest (smallest
          cache, then fewest requests in flight, then shallowest prefetch); one per cache size,
          so the first trials also tell the sampler how much the cache matters.
        * ``cost``: the smallest caches whose predicted utilisation reaches ``min_au`` (0.9 when
          not given); without any, the lowest predicted wait.
        * ``wait,cost``: points spread along the predicted Pareto front of (wait, cache bytes).

        Only trusted predictions are candidates, and none at all when :meth:`assess` says the model
        is unfit here: then the list is empty and the tuner's sampler chooses every trial.

        Raises:
            UsageError: Unknown objective or ``k < 1``.
        """
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        if objective not in ("wait", "cost", "wait,cost"):
            raise UsageError(f"unknown objective {objective!r}", hint="use wait, cost or wait,cost")
        if not self.assess(space)[0]:
            return []
        guesses = [g for g in self.screen(space) if g.prediction.trusted]
        if not guesses:
            return []

        def cheap(g: Guess) -> tuple[int, int, int]:
            return (g.config.cache_size_bytes, g.config.concurrency, g.config.prefetch_depth)

        if objective == "wait":
            ranked = sorted(guesses, key=lambda g: (round(g.prediction.wait_fraction / 0.005), *cheap(g)))
            picked: list[Guess] = []
            seen: set[int] = set()
            for g in ranked:
                if g.config.cache_size_bytes not in seen:
                    picked.append(g)
                    seen.add(g.config.cache_size_bytes)
                if len(picked) == k:
                    break
            return picked
        if objective == "cost":
            target = 0.9 if min_au is None else min_au
            feasible = [g for g in guesses if g.prediction.accelerator_utilization >= target]
            if not feasible:
                return sorted(guesses, key=lambda g: (g.prediction.wait_fraction, *cheap(g)))[:k]
            return sorted(feasible, key=lambda g: (*cheap(g), g.prediction.wait_fraction))[:k]
        if objective == "wait,cost":
            pts = [(g.prediction.wait_fraction, float(g.config.cache_size_bytes)) for g in guesses]
            front = [guesses[i] for i in pareto_front(pts)]
            if len(front) <= k:
                return front
            step = (len(front) - 1) / (k - 1) if k > 1 else 0
            return [front[round(j * step)] for j in range(k)]
        raise UsageError(f"unknown objective {objective!r}", hint="use wait, cost or wait,cost")
