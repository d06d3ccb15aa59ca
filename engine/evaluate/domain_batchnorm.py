"""Separate BatchNorm statistics for synthetic images: ``DomainBatchNorm``.

"Diversify, Don't Fine-Tune" (Yu et al. 2023) trains on real and synthetic images with their
own BatchNorm statistics: in a training batch the real rows are normalised with the real rows'
mean and variance and the synthetic rows with the synthetic rows', and the running statistics
used at test time come from the real rows only. Both kinds share the affine weight and bias
(and every convolution), so the model is the same network, with the same state dict, as one
with plain BatchNorm; in eval mode it *is* plain BatchNorm.

``separate_batchnorm(model)`` swaps every ``BatchNorm2d`` of a model (the tiny ResNet,
torchvision ResNets) for a ``DomainBatchNorm`` sharing its parameters and buffers;
``batch_domains(model, is_synthetic)`` says, for one forward pass, which rows are synthetic.
With several processes (an initialised process group of more than one rank) the per-kind sums
are all-reduced, so the statistics are those of the whole batch's real rows and synthetic rows
over all ranks (gloo on the CPU, nccl on CUDA), as ``GlobalBatchNorm`` does for one kind: one
collective per layer and forward whatever the rows of a rank, so ranks never wait on each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from engine.torchrun.batchnorm import replace_batchnorm, sum_over_ranks


class DomainBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with separate training statistics for the synthetic rows of a batch.

    ``self.is_synthetic`` ((b,) bool, this rank's rows; set through ``batch_domains``) splits
    the batch in training mode; unset, every row counts as real. Running statistics are
    updated with the real rows' statistics only, and not at all by a batch without real row.
    """

    is_synthetic: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, C, H, W) -> (b, C, H, W)
        if not self.training:
            return super().forward(x)
        b, c = x.shape[0], x.shape[1]
        syn = (self.is_synthetic if self.is_synthetic is not None
               else torch.zeros(b, dtype=torch.bool, device=x.device))
        if syn.shape != (b,):
            raise ValueError(f"is_synthetic must have shape ({b},), got {tuple(syn.shape)}")
        # 1. per kind (0 real, 1 synthetic): sums, sums of squares and counts, float64
        xd = x.double()
        onehot = torch.stack([~syn, syn], dim=1).to(xd.dtype)  # (b, 2)
        sums = torch.einsum("bk,bchw->kc", onehot, xd)  # (2, C)
        squares = torch.einsum("bk,bchw->kc", onehot, xd * xd)  # (2, C)
        counts = onehot.sum(dim=0) * (x.shape[2] * x.shape[3])  # (2,)
        local = torch.cat([sums.reshape(-1), squares.reshape(-1), counts])  # (4C + 2,)
        # 2. over all ranks (one collective, whatever this rank's rows)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            local = sum_over_ranks(local)
        sums, squares = local[:2 * c].view(2, c), local[2 * c:4 * c].view(2, c)
        counts = local[4 * c:].detach()  # (2,) numbers of values, no gradient
        mean = sums / counts.clamp_min(1.0).unsqueeze(1)  # (2, C)
        var = (squares / counts.clamp_min(1.0).unsqueeze(1) - mean * mean).clamp_min(0.0)
        # 3. running statistics: the real rows' only
        if self.track_running_stats and float(counts[0]) > 0:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var[0] * counts[0] / (counts[0] - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(m * mean[0].float())
                self.running_var.mul_(1 - m).add_(m * unbiased.float())
        # 4. each row normalised with its kind's statistics, the affine part shared
        scale = (var + self.eps).rsqrt().float()  # (2, C)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean.float() * scale
        if self.bias is not None:
            shift = shift + self.bias
        kind = syn.long()  # (b,)
        return x * scale[kind].view(b, c, 1, 1) + shift[kind].view(b, c, 1, 1)


def separate_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm2d (plain or ``GlobalBatchNorm``) replaced by a
    ``DomainBatchNorm`` sharing its parameters and buffers, so an optimiser built on
    ``module`` still holds them and the state dict is unchanged."""
    return replace_batchnorm(module, DomainBatchNorm,
                             lambda m: isinstance(m, nn.BatchNorm2d)
                             and not isinstance(m, DomainBatchNorm))


@contextlib.contextmanager
def batch_domains(model: nn.Module, is_synthetic: torch.Tensor) -> Iterator[None]:
    """For the forward passes inside: the rows of ``model``'s input that are synthetic,
    ``is_synthetic`` (b,) bool on the model's device; cleared on exit."""
    layers = [m for m in model.modules() if isinstance(m, DomainBatchNorm)]
    for layer in layers:
        layer.is_synthetic = is_synthetic
    try:
        yield
    finally:
        for layer in layers:
            layer.is_synthetic = None
