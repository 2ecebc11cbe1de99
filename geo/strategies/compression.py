"""What a synchronous cross-region exchange puts on the wire: fp16/bf16/PowerSGD through PyTorch's DDP hooks.

The hooks (``fp16_compress_hook``, ``bf16_compress_hook``, ``powerSGD_hook`` with ``PowerSGDState``)
are written for DDP's gradient buckets; :class:`_Bucket` gives them one flat tensor instead, so the
same hooks compress a model average or a pseudo-gradient. The asynchronous strategy, whose exchange
is point-to-point rather than an all-reduce, uses only :attr:`Compression.wire_dtype`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from delibench.errors import UsageError
from delibench.geo.sync import GeoComm

__all__ = ["COMPRESSIONS", "Compression", "exchange_sum_"]

COMPRESSIONS = ("none", "fp16", "bf16", "powersgd")


class _Bucket:
    """The part of ``dist.GradBucket`` PyTorch's communication hooks use, over one flat tensor."""

    def __init__(self, buffer: torch.Tensor, shapes: list[torch.Size]) -> None:
        self._buffer = buffer
        self._views = []
        offset = 0
        for shape in shapes:
            n = shape.numel()
            self._views.append(buffer[offset : offset + n].view(shape))
            offset += n
        if offset < buffer.numel():  # a tail that is not a parameter (optimizer state, a weight)
            self._views.append(buffer[offset:])

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def set_buffer(self, tensor: torch.Tensor) -> None:
        self._buffer.copy_(tensor)

    def gradients(self) -> list[torch.Tensor]:
        return self._views

    def parameters(self) -> list[torch.Tensor]:
        return self._views

    def index(self) -> int:
        return 0

    def is_last(self) -> bool:
        return True


class Compression:
    """What a synchronous cross-region exchange puts on the wire, through PyTorch's DDP communication hooks.

    Args:
        kind: ``none`` (float32), ``fp16`` / ``bf16`` (``default_hooks.fp16_compress_hook`` /
            ``bf16_compress_hook``: half the bytes) or ``powersgd`` (``powerSGD_hook`` with a
            ``PowerSGDState``: rank-``rank`` factors of every matrix, vectors sent as they are,
            error feedback, a plain all-reduce for the first ``start_iter`` exchanges).
        rank: PowerSGD's matrix approximation rank.
        start_iter: PowerSGD: exchanges done uncompressed first (PyTorch requires at least 2).
        min_compression_rate: PowerSGD: compress a matrix only when it shrinks by more than this.
    """

    def __init__(self, kind: str = "none", *, rank: int = 1, start_iter: int = 2, min_compression_rate: float = 2.0) -> None:
        if kind not in COMPRESSIONS:
            raise UsageError(f"unknown compression {kind!r}", hint=f"choose one of {', '.join(COMPRESSIONS)}")
        self.kind, self.rank, self.start_iter, self.min_compression_rate = kind, rank, start_iter, min_compression_rate
        self._powersgd: Any = None
        self._restored: dict[str, Any] | None = None  # a loaded PowerSGD state, applied when PowerSGD starts

    def state_dict(self) -> dict[str, Any]:
        """``kind`` and, for PowerSGD, its state: exchanges done, error feedback, warm-start factors, random state."""
        state = self._powersgd
        if state is None:
            return {"kind": self.kind, "powersgd": self._restored}
        _, keys, pos, has_gauss, gauss = state.rng.get_state()
        return {
            "kind": self.kind,
            "powersgd": {
                "iter": int(state.iter),
                "error": {int(k): v.detach().clone() for k, v in state.error_dict.items()},
                "p_memory": {int(k): v.detach().clone() for k, v in state.p_memory_dict.items()},
                "q_memory": {int(k): v.detach().clone() for k, v in state.q_memory_dict.items()},
                "rng": [torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)],
                "numel_before": int(state.total_numel_before_compression),
                "numel_after": int(state.total_numel_after_compression),
            },
        }

    def check_state(self, state: Any) -> str | None:
        """What is wrong with ``state`` (from :meth:`state_dict`) for this compression, or ``None``."""
        if not isinstance(state, dict) or "kind" not in state or "powersgd" not in state:
            return "corrupt state: 'compression' is not a Compression state_dict()"
        if state["kind"] != self.kind:
            return f"the state was saved with compression {state['kind']!r}, this strategy uses {self.kind!r}"
        saved = state["powersgd"]
        keys = ("iter", "error", "p_memory", "q_memory", "rng", "numel_before", "numel_after")
        if saved is not None and (self.kind != "powersgd" or not isinstance(saved, dict) or any(k not in saved for k in keys)):
            return "corrupt state: its PowerSGD state is incomplete"
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (checked with :meth:`check_state`)."""
        self._restored = state["powersgd"]
        if self._powersgd is not None and self._restored is not None:
            self._restore_powersgd()

    def _restore_powersgd(self) -> None:
        import numpy as np

        saved, state = self._restored, self._powersgd
        if saved is None or state is None:
            return
        state.iter = int(saved["iter"])
        state.error_dict = {int(k): v.clone() for k, v in saved["error"].items()}
        state.p_memory_dict = {int(k): v.clone() for k, v in saved["p_memory"].items()}
        state.q_memory_dict = {int(k): v.clone() for k, v in saved["q_memory"].items()}
        keys, pos, has_gauss, gauss = saved["rng"]
        state.rng.set_state(("MT19937", np.asarray(keys.numpy(), dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))
        state.total_numel_before_compression = int(saved["numel_before"])
        state.total_numel_after_compression = int(saved["numel_after"])
        self._restored = None

    @staticmethod
    def of(value: Compression | str | None) -> Compression:
        """``None``, a name or a :class:`Compression` -> a :class:`Compression`."""
        if isinstance(value, Compression):
            return value
        return Compression(value or "none")

    @property
    def wire_dtype(self) -> torch.dtype | None:
        """The element type cast to on the wire (``None``: as is)."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.kind)

    def reduce_(self, flat: torch.Tensor, group: Any, shapes: list[torch.Size]) -> list[tuple[int, int]]:
        """Sum ``flat`` in place over ``group``; returns each all-reduce put on the wire as ``(elements, bytes each)``."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        if self.kind == "none":
            dist.all_reduce(flat, group=group)
            return [(flat.numel(), flat.element_size())]
        size = group.size()
        bucket = _Bucket(flat, shapes)
        if self.kind in ("fp16", "bf16"):
            hook = default_hooks.fp16_compress_hook if self.kind == "fp16" else default_hooks.bf16_compress_hook
            flat.copy_(hook(group, bucket).wait()).mul_(size)  # the hooks return the mean
            return [(flat.numel(), 2)]
        if self._powersgd is None:
            self._powersgd = powerSGD_hook.PowerSGDState(
                process_group=group,
                matrix_approximation_rank=self.rank,
                start_powerSGD_iter=self.start_iter,
                min_compression_rate=self.min_compression_rate,
            )
            if self._restored is not None:
                self._restore_powersgd()
        state = self._powersgd
        vanilla = state.iter < state.start_powerSGD_iter
        flat.copy_(powerSGD_hook.powerSGD_hook(state, bucket).wait()).mul_(size)
        if vanilla:
            return [(flat.numel(), flat.element_size())]
        uncompressed = 0
        for view in bucket.gradients():
            matrix = view.view(view.shape[0], -1) if view.dim() > 0 else view.view(1, 1)
            rank = min(matrix.shape[0], matrix.shape[1], self.rank)
            if view.dim() <= 1 or not powerSGD_hook._should_compress(matrix.shape[0], matrix.shape[1], rank, self.min_compression_rate)[0]:
                uncompressed += view.numel()
        es = flat.element_size()
        return [(uncompressed, es), (state.p_memory_dict[0].numel(), es), (state.q_memory_dict[0].numel(), es)]


def exchange_sum_(comm: GeoComm, flat: torch.Tensor, compression: Compression, shapes: list[torch.Size]) -> None:
    """Sum ``flat`` over every rank through ``comm`` (hierarchical, metered), compressed across regions."""
    if compression.kind == "none":
        comm.all_sum_(flat)
        return

    def reducer(tensor: torch.Tensor, group: Any) -> list[tuple[int, int]]:
        return compression.reduce_(tensor, group, shapes)

    comm.all_sum_(flat, reducer=reducer)
