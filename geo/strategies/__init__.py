"""Geo sync strategies as optimizer wrappers you add to your own (DDP) training loop.

Each strategy wraps the optimizer you already have, the way PyTorch's ``PostLocalSGDOptimizer``
wraps one: ``opt = ModelAveraging(torch.optim.SGD(...), model, period=8, group=comm)``, then
``opt.zero_grad()`` / ``loss.backward()`` / ``opt.step()`` as before and ``opt.finish()`` after the
last step. ``group`` is a :class:`~delibench.geo.sync.GeoComm` (which rank is in which region;
built collectively on every rank); inside a region, wrap the model in DDP over
``comm.region_group`` as usual (LAN), and the strategy takes care of what crosses regions (WAN).
Every rank must start from the same parameters: by default the wrappers broadcast rank 0's at
construction, as DDP does.

* :class:`ModelAveraging` (MA, local SGD): every ``period`` steps the parameters of all ranks are
  averaged, each rank weighted by the samples it processed since the last average.
  Optimizer state (momentum, Adam moments) stays local by default, as in PyTorch's post-local SGD;
  ``optimizer_state="average"`` averages it too (same weights, more bytes), ``"reset"`` clears it.
* :class:`AsyncGradientAccumulation` (ASGD-GA, after Cloudless-Training): every region accumulates
  ``accum`` local steps (a *round*), sends its update to every other region and goes on without
  waiting; updates from other regions are applied at the next round boundary after they arrive.
  The staleness of an update is how many rounds the receiving region has moved on since the round
  the update was made in; a region waits only when it would otherwise apply an update more than
  ``max_staleness`` rounds stale. Optimizer state stays local: received updates change the
  parameters only.
* :class:`DiLoCo` (beyond the paper): an inner optimizer (AdamW in the paper) runs ``period`` local
  steps, then the pseudo-gradient ``params_before - params_after`` is averaged over all ranks and
  an outer Nesterov SGD step is taken from ``params_before``. The inner optimizer's state stays
  local; the outer momentum is identical on every rank (it sees the same averaged pseudo-gradient).
* :class:`AllReduceGradients`: the synchronous baseline (gradients averaged over all ranks every step).

**Checkpoints.** Every strategy has ``state_dict()`` / ``load_state_dict()`` in the shape of
``torch.optim.Optimizer``'s (the wrapped optimizer's state nested under ``optim``, the strategy's
own counters, anchors, outer optimizer and compression state beside it, a ``version``): save it
with the model's ``state_dict()`` on every rank (ranks of model averaging differ between averages),
and on restart build model, optimizer and strategy as before, then load both. A restored run
continues as the uninterrupted one would (exactly, for the synchronous strategies and for
ASGD-GA with ``max_staleness=0``); :class:`AsyncGradientAccumulation` says what its checkpoint
holds of the updates in flight.

Compression of what crosses regions (:class:`Compression`) reuses PyTorch's DDP communication hooks
(``fp16_compress_hook``, ``bf16_compress_hook``, ``powerSGD_hook`` with ``PowerSGDState``) on one
flat bucket per exchange; the asynchronous strategy, whose exchange is point-to-point rather than an
all-reduce, takes fp16/bf16 only.

**How ASGD-GA exchanges without waiting.** Each region's leader sends its update to every other
region's leader from background threads, one gloo group per directed pair of leaders
(:mod:`~delibench.geo.strategies.peer_links` says why this design). Each update goes to each of the
R-1 other regions: (R-1) x its size per region per round, against 2(R-1)/R x for a ring all-reduce
-- the same for two regions, 1.5x for three. Within a region the leader broadcasts what it applied
(LAN), so all the region's ranks stay identical. Each region keeps its model of record in float64
(the parameters are its float32 copy): the final parameters are the initial ones minus the sum of
every region's updates, and float64 sums of these float32 updates are exact in practice, so after
:meth:`AsyncGradientAccumulation.finish` every rank holds the same parameters without another
exchange (``finish(average=True)`` adds one all-reduce to guarantee it).

The modules, one job each: :mod:`~delibench.geo.strategies.flat` (parameters <-> one flat vector),
:mod:`~delibench.geo.strategies.base` (the wrapper every strategy is, its checkpoint envelope),
:mod:`~delibench.geo.strategies.compression` (fp16/bf16/PowerSGD on the wire),
:mod:`~delibench.geo.strategies.allreduce`, :mod:`~delibench.geo.strategies.averaging`,
:mod:`~delibench.geo.strategies.diloco`, :mod:`~delibench.geo.strategies.asgd` (the strategies) and
:mod:`~delibench.geo.strategies.peer_links` (ASGD-GA's background exchange).
"""

from __future__ import annotations

from delibench.geo.strategies.allreduce import AllReduceGradients
from delibench.geo.strategies.asgd import AsyncGradientAccumulation
from delibench.geo.strategies.averaging import ModelAveraging
# the module constants of the one-file module, still here
from delibench.geo.strategies.base import STATE_VERSION as STATE_VERSION
from delibench.geo.strategies.compression import COMPRESSIONS as COMPRESSIONS
from delibench.geo.strategies.compression import Compression
from delibench.geo.strategies.diloco import DiLoCo

__all__ = [
    "AllReduceGradients",
    "AsyncGradientAccumulation",
    "Compression",
    "DiLoCo",
    "ModelAveraging",
]
