"""Resumable iteration: the ``state_dict``/``load_state_dict`` of the deli loaders (rank and node scope),
and the loop that hands an epoch's batches on while keeping the position they save, in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from delibench.errors import UsageError
from delibench.loaders.sampler import rank_sample_count

if TYPE_CHECKING:
    from delibench.loaders.base import Batch
    from delibench.loaders.pipeline import WorkerResult

__all__ = ["STATE_VERSION", "ResumableEpochs", "check_state"]

#: Version of the dict :meth:`ResumableEpochs.state_dict` returns (see there for its fields).
STATE_VERSION = 1


class ResumableEpochs:
    """Mixin of a loader that walks each rank's known order epoch by epoch and can resume mid-epoch.

    The loader sets ``self.ctx`` (its :class:`~delibench.loaders.base.LoaderContext`),
    ``self._position = (epoch, samples handed on, batches yielded)`` as of the last batch yielded,
    and ``self._resume = None``; its ``iter_epoch`` starts with ``start, done = self._take_resume(epoch)``
    and yields its batches through :meth:`_hand_on`.
    :class:`~delibench.loaders.deli.DeliLoader` (rank scope) and
    :class:`~delibench.loaders.node.NodeDeliLoader` (node scope) share it, so a state saved by
    one scope resumes in the other.
    """

    ctx: Any
    _position: tuple[int, int, int]
    _resume: tuple[int, int, int] | None

    def _samples_per_epoch(self, world_size: int | None = None) -> int:
        world = self.ctx.world_size if world_size is None else world_size
        return rank_sample_count(len(self.ctx.manifest), world, self.ctx.drop_last)

    def _identity(self) -> dict[str, Any]:
        """The fields of a saved state that must equal this loader's for the same order to follow."""
        return {
            "dataset_id": self.ctx.manifest.dataset_id,
            "num_samples": len(self.ctx.manifest),
            "seed": self.ctx.seed,
            "order": self.ctx.order,
            "exchange_fraction": self.ctx.exchange_fraction,
            "drop_last": self.ctx.drop_last,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where this rank's iteration stands, as a plain, versioned dict (JSON- and torch.save-able).

        Same contract as torchdata's ``StatefulDataLoader.state_dict``: it describes the batches
        already yielded (taken in the loop body, it counts the batch just received), and
        :meth:`load_state_dict` on a new loader makes the next ``iter_epoch`` of that epoch
        deliver exactly the samples not yet delivered, in the uninterrupted order. Fields
        (version 1):

        * ``version``: 1.
        * ``epoch``: the epoch to resume; ``samples_yielded``: how many samples of this rank's
          order of that epoch were handed on (the position to resume at; torchdata's
          ``_num_yielded`` counts batches, this counts samples so a resume may change the batch
          size); ``batches_yielded``: batches yielded in that epoch (informative). A finished
          epoch is saved as the next one at 0 (torchdata's ``_iterator_finished``).
        * ``samples_per_epoch``: this rank's samples per epoch; ``batch_size``.
        * What fixes the order and must match on load: ``dataset_id`` and ``num_samples`` (the
          manifest), ``seed``, ``order``, ``exchange_fraction``, ``drop_last``, ``world_size`` and
          ``rank``.
        """
        epoch, handed, batches = self._resume if self._resume is not None else self._position
        if handed >= self._samples_per_epoch():
            epoch, handed, batches = epoch + 1, 0, 0
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "samples_yielded": handed,
            "batches_yielded": batches,
            "samples_per_epoch": self._samples_per_epoch(),
            "batch_size": self.ctx.batch_size,
            "world_size": self.ctx.world_size,
            "rank": self.ctx.rank,
            **self._identity(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state`` (a :meth:`state_dict`): the next ``iter_epoch(state["epoch"])``
        starts at the first sample not yet delivered.

        World size: a state saved mid-epoch resumes only at the same world size and rank (the
        rest of a DistributedSampler epoch is defined per rank; re-dealing it over another
        number of ranks is what Mosaic Streaming calls elastic determinism, and deli does not
        offer it). A state saved at an epoch boundary (``samples_yielded`` 0) resumes at any
        world size: that epoch is dealt afresh over the new ranks, each sample once.

        Raises:
            UsageError: One line naming what is wrong: not a state dict, an unknown version, a
                missing or ill-typed field, or a field that does not match this loader (another
                dataset, seed, order, or a mid-epoch world size or rank).
        """
        epoch, handed, batches = check_state(state, self._identity(), self.ctx.world_size, self.ctx.rank, self._samples_per_epoch)
        if handed >= self._samples_per_epoch():
            epoch, handed, batches = epoch + 1, 0, 0
        self._resume = (epoch, handed, batches)

    def _take_resume(self, epoch: int) -> tuple[int, int]:
        """Where ``epoch`` starts: ``(samples, batches)`` already delivered by a loaded state, else 0."""
        resume = self._resume
        if resume is None:
            return 0, 0
        if resume[0] != epoch:
            raise UsageError(f"the loaded loader state resumes epoch {resume[0]}, but epoch {epoch} was asked for",
                             hint=f"iterate epoch {resume[0]} next (state_dict()['epoch']); deli_loader does this itself")
        self._resume = None
        return resume[1], resume[2]

    def _hand_on(
        self,
        results: Callable[[], Iterable[tuple[int, WorkerResult]]],
        batches: list[list[int]],
        epoch: int,
        handed: int,
        done_batches: int,
        skipped: list[str],
        original_error: Callable[[], BaseException | None] | None = None,
    ) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` that ``results()`` decodes, keeping ``self._position`` as of
        the last batch yielded (``handed`` samples and ``done_batches`` batches of the epoch so far).

        Args:
            results: Makes the ``(batch number in batches, worker result)`` pairs, in order.
            batches: The epoch's batches (sample indices), to count the samples each result hands on.
            epoch: The epoch, for the position.
            handed: Samples of this rank's epoch order already handed on (a resume's start).
            done_batches: Batches of the epoch already yielded.
            skipped: Where the keys of samples skipped under ``on_error=skip`` in decoding are listed.
            original_error: Called when a worker reports a failure: the exception it stands for, if
                this process holds it (rank scope's feed does), raised instead of the worker's message.
        """
        # NOTE: ``results`` is a factory so that the results iterator lives only on this loop's
        # stack: when the epoch stops early or fails, it is closed at once (the pipeline's on_abort
        # runs before the caller's clean-up), not when a traceback holding a reference goes.
        for b, result in results():
            if result.meter is not None:
                skipped.extend(result.meter.skipped_keys)  # decode failures under on_error=skip
            if result.failure is not None and original_error is not None:
                error = original_error()
                if error is not None:
                    raise error  # the original exception, raised in this process
            batch = result.unwrap()
            # Results arrive in batch order; before the yield, so a state_dict() taken in the
            # loop body counts this batch as delivered (a batch whose samples were all skipped
            # under on_error=skip counts as passed).
            handed += len(batches[b])
            done_batches += 1
            self._position = (epoch, handed, done_batches)
            if batch is not None:
                yield batch


_STATE_INTS = ("epoch", "samples_yielded", "batches_yielded", "world_size", "rank", "num_samples", "seed")


def check_state(
    state: Any, identity: dict[str, Any], world_size: int, rank: int, per_epoch: Any
) -> tuple[int, int, int]:
    """``(epoch, samples_yielded, batches_yielded)`` of a saved loader state, checked against this loader.

    Raises:
        UsageError: One line naming the first thing that is wrong or does not match.
    """
    if not isinstance(state, Mapping):
        raise UsageError(f"loader state must be the dict state_dict() returned, got {type(state).__name__}")
    if state.get("version") != STATE_VERSION:
        raise UsageError(f"loader state version {state.get('version')!r} is not supported (this delibench reads version {STATE_VERSION})",
                         hint="the state was saved by another delibench, or is not a deli loader state")
    for name in (*_STATE_INTS, *identity):
        if name not in state:
            raise UsageError(f"loader state lacks {name!r}", hint="save it with state_dict() and load the whole dict")
    for name in _STATE_INTS:
        value = state[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"loader state field {name!r} must be a whole number >= 0, got {value!r}")
    for name, mine in identity.items():
        if state[name] != mine:
            raise UsageError(f"loader state does not match this loader: {name} was {state[name]!r} when saved, is {mine!r} now",
                             hint="resume with the dataset, seed and order options the state was saved with")
    epoch, handed, batches = state["epoch"], state["samples_yielded"], state["batches_yielded"]
    saved_world, saved_rank = state["world_size"], state["rank"]
    if saved_rank >= saved_world:
        raise UsageError(f"loader state is corrupt: rank {saved_rank} is outside its world size {saved_world}")
    if handed and (saved_world, saved_rank) != (world_size, rank):
        raise UsageError(
            f"loader state was saved mid-epoch {epoch} at world size {saved_world} rank {saved_rank}; this job is world size {world_size} rank {rank}",
            hint="a mid-epoch state resumes only on the same ranks; restart at the same world size, or from a state saved at an epoch boundary",
        )
    if handed > per_epoch(saved_world):
        raise UsageError(f"loader state is corrupt: samples_yielded {handed} exceeds the {per_epoch(saved_world)} samples of a rank's epoch")
    return epoch, handed, batches
