"""Per-record clipping and summing in a few large operations instead of several per parameter.

Opacus' ``DPOptimizer.clip_and_accumulate`` takes, for each of the UNet's ~180 parameters, a
per-record norm, then a weighted sum (an ``einsum``) and an addition: about a thousand small
operations per physical batch, which on a GPU cost CPU dispatch time rather than arithmetic.
:class:`FusedClipMixin` computes the same thing on all parameters at once: one R×P matrix of the
records' gradients, one row norm, one clip factor per record, one matrix–vector product; each
parameter's clipped sum is a view of the result. The clip is Opacus' own formula
(``min(1, C / (‖g‖ + 1e-6))``), so gradients match it to rounding (tests/dp/test_clipping.py).
"""

from __future__ import annotations

import torch
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

CLIP_EPSILON = 1e-6
"""Added to each record's norm before dividing, as Opacus does."""


def clipped_sum(per_record: list[torch.Tensor], max_norm: float, dtype: torch.dtype) -> torch.Tensor:
    """Σ_r min(1, C / (‖g_r‖ + 1e-6)) · g_r over the records, flattened over all parameters.

    Args:
        per_record: one R×(parameter shape) tensor per parameter (R ≥ 1 records).
        max_norm: the clipping norm C.
        dtype: the parameters' dtype (per-record gradients in a lower precision are cast up).

    Returns:
        The clipped sum as one vector of Σ parameter sizes, in ``per_record``'s order.
    """
    flat = torch.cat([g.reshape(len(g), -1).to(dtype) for g in per_record], dim=1)
    factors = (max_norm / (flat.norm(2, dim=1) + CLIP_EPSILON)).clamp(max=1.0)
    return factors @ flat


class FusedClipMixin:
    """Replaces ``DPOptimizer.clip_and_accumulate`` by :func:`clipped_sum` (same result, fewer operations)."""

    def clip_and_accumulate(self) -> None:
        """Clip each record's gradient to ``max_grad_norm`` and add the sum into each ``p.summed_grad``."""
        samples = self.grad_samples
        if len(samples[0]) == 0:  # an empty Poisson batch: Opacus' own path records a zero sum
            super().clip_and_accumulate()
            return
        summed = clipped_sum(samples, self.max_grad_norm, self.params[0].dtype)
        offset = 0
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            piece = summed[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
            if p.summed_grad is not None:
                p.summed_grad += piece
            else:
                p.summed_grad = piece
            _mark_as_processed(p.grad_sample)


class FusedClipDPOptimizer(FusedClipMixin, DPOptimizer):
    """Opacus' ``DPOptimizer`` with the fused clip."""


class FusedClipDistributedDPOptimizer(FusedClipMixin, DistributedDPOptimizer):
    """Opacus' ``DistributedDPOptimizer`` with the fused clip."""
