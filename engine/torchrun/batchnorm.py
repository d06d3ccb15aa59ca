"""BatchNorm over the whole batch of all ranks on the CPU: ``GlobalBatchNorm``.

``SyncBatchNorm`` needs CUDA; with gloo ranks on the CPU, ``global_batchnorm(model)`` swaps
every ``BatchNorm2d`` for a ``GlobalBatchNorm`` that all-reduces its statistics, so one step
on W ranks of B/W images each is the step of one process on B images (up to float order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: d(sum_r x_r)/dx_r = 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks (all-reduce), its gradient summed back to every rank."""
    return _SumOverRanks.apply(x)


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch over all ranks.

    ``SyncBatchNorm`` needs CUDA; this is its CPU counterpart for gloo process groups. Each
    forward all-reduces per-channel sums (float64) through an autograd-aware collective, so
    the backward pass sums the statistics' gradients over the ranks too. In eval mode it is
    plain BatchNorm with the running statistics (no collective).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, C, H, W), this rank's share of the batch -> (b, C, H, W)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        c = x.shape[1]
        xd = x.double()
        local = torch.cat([xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3)),
                           xd.new_tensor([x.shape[0] * x.shape[2] * x.shape[3]])])  # (2C + 1,)
        total = _SumOverRanks.apply(local)  # sums over the ranks, gradients summed back
        count = total[-1]
        mean = total[:c] / count  # (C,)
        var = (total[c:2 * c] / count - mean * mean).clamp_min(0.0)  # (C,) biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * count / (count - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(m * mean.float())
                self.running_var.mul_(1 - m).add_(m * unbiased.float())
        scale = (var + self.eps).rsqrt().float()  # (C,)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean.float() * scale
        if self.bias is not None:
            shift = shift + self.bias
        return x * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)


def replace_batchnorm(module: nn.Module, cls: type[nn.BatchNorm2d],
                      select: Callable[[nn.Module], bool]) -> nn.Module:
    """``module`` with every sub-module ``m`` for which ``select(m)`` is true (a BatchNorm2d)
    replaced by a ``cls`` sharing its parameters and buffers, so an optimiser built on
    ``module`` still holds them and the state dict is unchanged."""
    if select(module):
        bn = cls(module.num_features, module.eps, module.momentum, module.affine,
                 module.track_running_stats)
        bn.weight, bn.bias = module.weight, module.bias
        bn.running_mean, bn.running_var = module.running_mean, module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        return bn
    for name, child in module.named_children():
        module.add_module(name, replace_batchnorm(child, cls, select))
    return module


def global_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every plain BatchNorm2d replaced by a GlobalBatchNorm."""
    return replace_batchnorm(module, GlobalBatchNorm, lambda m: type(m) is nn.BatchNorm2d)
