"""The "simclr" encoder: a small CNN trained self-supervised on the dataset (offline).

For users without downloads, an alternative to the PCA of pixels: a 4-layer CNN trained
with SimCLR's NT-Xent loss on two augmented views of each training image (random resized
crop with a small rotation, brightness / contrast / saturation jitter; no labels used).
At ``config.image_size`` (16 px for the digits) it trains in a minute or two on a CPU.

Network (w = 32, S = image_size)::

    x (B, 3, S, S) -> conv3x3(w) -> conv3x3(2w, /2) -> conv3x3(2w) -> conv3x3(4w, /2)
      (BatchNorm + ReLU after each) -> global average pool (B, 4w) -> linear (B, dim) = h
    loss only: projector h -> linear(dim) -> ReLU -> linear(dim) -> z, NT-Xent on z

The representation is ``e = sqrt(dim) * h / ||h||`` (like the PCA encoder: a fixed norm,
coordinates of unit scale). Training is seeded (a ``torch.Generator`` for the data order
and the augmentations, the seed for the initial weights), so the same images, config and
thread count give the same weights. State: the network's tensors in ``state.safetensors``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from engine.config import EncodeConfig
from engine.data import resize_pixels
from engine.encoders.base import Encoder
from engine.encoders.registry import register_encoder
from engine.errors import InvalidConfigError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress

log = logging.getLogger(__name__)

WIDTH = 32
_CROP_AREA = (0.5, 1.0)  # fraction of the image kept by the random resized crop
_ASPECT = (3 / 4, 4 / 3)
_ROTATE_DEG = 12.0
_JITTER = 0.4  # brightness, contrast and saturation factors in [1 - j, 1 + j]


def build_network(dim: int, width: int = WIDTH) -> Any:
    """The CNN + projector as a ``torch.nn.ModuleDict`` with keys ``backbone``, ``projector``."""
    from torch import nn

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    backbone = nn.Sequential(
        *block(3, width, 1),  # (B, w, S, S)
        *block(width, 2 * width, 2),  # (B, 2w, S/2, S/2)
        *block(2 * width, 2 * width, 1),
        *block(2 * width, 4 * width, 2),  # (B, 4w, S/4, S/4)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w)
        nn.Linear(4 * width, dim),  # (B, dim)
    )
    projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
    return nn.ModuleDict({"backbone": backbone, "projector": projector})


def augment(x: Any, generator: Any) -> Any:
    """Random resized crop + small rotation, then colour jitter. (B, 3, S, S) in [0, 1] -> same."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    # 1. geometry: an affine grid = crop (scale, aspect, position) and rotation
    area = uniform(*_CROP_AREA)
    log_ratio = uniform(math.log(_ASPECT[0]), math.log(_ASPECT[1]))
    sx = (area * torch.exp(log_ratio)).sqrt().clamp(max=1.0)
    sy = (area / torch.exp(log_ratio)).sqrt().clamp(max=1.0)
    tx = (1 - sx) * uniform(-1.0, 1.0)
    ty = (1 - sy) * uniform(-1.0, 1.0)
    angle = uniform(-_ROTATE_DEG, _ROTATE_DEG) * math.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos, -sy * sin, tx], 1),
                         torch.stack([sx * sin, sy * cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # 2. colour: brightness, contrast, saturation
    shape = (b, 1, 1, 1)
    x = x * uniform(1 - _JITTER, 1 + _JITTER).view(shape)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(1 - _JITTER, 1 + _JITTER).view(shape) + mean
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # (B, 1, S, S)
    x = (x - gray) * uniform(1 - _JITTER, 1 + _JITTER).view(shape) + gray
    return x.clamp(0.0, 1.0)


def nt_xent(z1: Any, z2: Any, temperature: float) -> Any:
    """SimCLR's loss for two views (B, d) each: cross-entropy of each view against its pair."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, d)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


@register_encoder
class SimCLREncoder(Encoder):
    """Self-supervised CNN: uint8 (N, H, W, 3) -> float32 (N, dim), norm sqrt(dim)."""

    name = "simclr"
    offline = True
    needs_fit = True
    needs_labels = False
    description = ("small CNN trained self-supervised (SimCLR) on your training images "
                   "(offline, no download; about a minute on a CPU for the digits)")

    def __init__(self, config: EncodeConfig, num_classes: int) -> None:
        super().__init__(config, num_classes)
        self.dim = config.dim
        self.net: Any = None
        self.losses: list[float] = []  # mean loss per epoch of the fit

    @property
    def is_fitted(self) -> bool:
        return self.net is not None

    def _tensor(self, pixels: np.ndarray) -> Any:
        """uint8 (B, H, W, 3) -> float32 (B, 3, S, S) in [0, 1] at ``image_size``."""
        import torch

        px = resize_pixels(np.asarray(pixels), self.config.image_size)
        x = torch.from_numpy(np.array(px, dtype=np.uint8))  # a writable copy (B, S, S, 3)
        return x.permute(0, 3, 1, 2).float() / 255.0

    def fit(self, pixels: np.ndarray, labels: np.ndarray | None = None,
            progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> None:
        """Train on uint8 (N, H, W, 3) training images; labels are ignored.

        Progress: ``ProgressEvent(stage="fit", step=epoch, total=fit_epochs,
        metrics={"loss": mean NT-Xent of the epoch})``.
        """
        import torch

        self._check_inputs(pixels, None)
        cfg = self.config
        n = int(pixels.shape[0])
        if n < 2:
            raise InvalidConfigError(f"the simclr encoder needs >= 2 training images, got {n}")
        device = torch.device(cfg.device)
        data = self._tensor(pixels)  # (N, 3, S, S) on the CPU
        generator = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = build_network(self.dim).to(device)
        batch = min(cfg.fit_batch_size, n)
        steps_per_epoch = max(1, n // batch)  # the last partial batch is dropped
        total = steps_per_epoch * cfg.fit_epochs
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.fit_lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        net.train()
        self.losses = []
        for epoch in range(cfg.fit_epochs):
            order = torch.randperm(n, generator=generator)
            epoch_loss = 0.0
            for i in range(steps_per_epoch):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                x = data[order[i * batch:(i + 1) * batch]]  # (B, 3, S, S)
                # 1. two views of each image, normalised to [-1, 1]
                v1 = augment(x, generator).to(device) * 2 - 1
                v2 = augment(x, generator).to(device) * 2 - 1
                # 2. embed, project, contrast
                z1 = net["projector"](net["backbone"](v1))  # (B, dim)
                z2 = net["projector"](net["backbone"](v2))
                loss = nt_xent(z1, z2, cfg.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                epoch_loss += float(loss.detach())
            self.losses.append(epoch_loss / steps_per_epoch)
            progress(ProgressEvent(stage="fit", step=epoch + 1, total=cfg.fit_epochs,
                                   metrics={"loss": self.losses[-1]}))
        net.eval()
        self.net = net
        log.info("simclr fit: %d images, %d epochs, loss %.3f -> %.3f", n, cfg.fit_epochs,
                 self.losses[0], self.losses[-1])

    def _encode_batch(self, pixels: np.ndarray | None,
                      labels: np.ndarray | None) -> np.ndarray:
        import torch

        assert pixels is not None
        x = self._tensor(pixels).to(self.config.device) * 2 - 1  # (B, 3, S, S)
        with torch.inference_mode():
            h = self.net["backbone"](x)  # (B, dim)
            h = h / h.norm(dim=1, keepdim=True).clamp_min(1e-12) * math.sqrt(self.dim)
        return h.float().cpu().numpy()

    # ---------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.net is None:
            return {}
        return {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}

    def extra_json(self) -> dict[str, Any]:
        return {"width": WIDTH, "fit_losses": [round(v, 6) for v in self.losses]}

    def load_state(self, manifest: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        import torch

        super().load_state(manifest, state)
        self.losses = [float(v) for v in manifest.get("fit_losses", [])]
        if not state:
            return
        net = build_network(self.dim, int(manifest.get("width", WIDTH)))
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        self.net = net.to(torch.device(self.config.device)).eval()
