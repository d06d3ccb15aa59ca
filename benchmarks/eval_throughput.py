"""Classifier training throughput: the engine's loop against a plain torchvision loop.

Both train the same classifier (same architecture, seed, batch, SGD recipe, channels-last)
on the same uint8 images for the same epochs and test on the same small split after every
epoch:

- engine: ``engine.evaluate.train_classifier`` (images decoded once into one uint8 tensor on
  the device; per-batch crop by ``affine_grid`` / ``grid_sample``; no DataLoader);
- plain: a ``Dataset`` over the same uint8 tensor with ``transforms.v2`` RandomResizedCrop +
  ToDtype + Normalize per image, a ``DataLoader`` (``--workers`` processes, shuffled), the
  usual ``for x, y in loader`` loop.

Prints both rates, then one JSON line: ratio = engine images/s / plain images/s; the goal is
>= 0.95 (the engine's data path never makes training slower than the textbook one).

Usage: python benchmarks/eval_throughput.py [--n 1024] [--size 16] [--arch resnet_tiny]
       [--epochs 1] [--batch 128] [--workers 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from torch import nn

from engine.config import EvalConfig
from engine.evaluate import build_classifier, train_classifier
from engine.evaluate.classifier_training import channel_stats, lr_at


class UInt8Images(torch.utils.data.Dataset):
    """(N, 3, S, S) uint8 images + labels, augmented per item with torchvision v2."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def plain_loop(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, classes: int,
               config: EvalConfig, workers: int) -> float:
    """Train as a torchvision user would; returns the seconds taken (tests included)."""
    from torchvision.transforms import v2

    device = torch.device(config.device)
    started = time.perf_counter()
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8
    mean, std = channel_stats(xs)
    transform = v2.Compose([
        v2.RandomResizedCrop(config.image_size, scale=(config.crop_scale_min, 1.0),
                             antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean.tolist(), std.tolist())])
    loader = torch.utils.data.DataLoader(
        UInt8Images(xs, torch.from_numpy(y), transform), batch_size=config.batch_size,
        shuffle=True, num_workers=workers, drop_last=False, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(config.seed))
    test = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean.tolist(), std.tolist())])
    xt_t = test(torch.from_numpy(xt).permute(0, 3, 1, 2).contiguous()).to(device)
    yt_t = torch.from_numpy(yt).to(device)
    torch.manual_seed(config.seed)
    model = build_classifier(config.arch, classes, config.image_size)
    model.to(device=device, memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(y) / config.batch_size)
    peak = config.learning_rate * config.batch_size / 256.0
    opt = torch.optim.SGD(model.parameters(), lr=peak, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    criterion = nn.CrossEntropyLoss()
    step = 0
    for _ in range(config.epochs):
        model.train()
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yb = yb.to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, config.epochs * steps_per_epoch,
                                config.warmup_epochs * steps_per_epoch, peak)
            loss = criterion(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            (model(xt_t.contiguous(memory_format=torch.channels_last)).argmax(1) == yt_t) \
                .float().mean().item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="training images")
    ap.add_argument("--test", type=int, default=256, help="test images")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--arch", default="resnet_tiny", choices=["resnet_tiny", "resnet18",
                                                              "resnet50"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (plain loop)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(args.n, args.size, args.size, 3), dtype=np.uint8)
    y = (np.arange(args.n) % args.classes).astype(np.int64)
    xt = rng.integers(0, 256, size=(args.test, args.size, args.size, 3), dtype=np.uint8)
    yt = (np.arange(args.test) % args.classes).astype(np.int64)
    config = EvalConfig(arch=args.arch, image_size=args.size, epochs=args.epochs,
                        batch_size=args.batch, augment="crop", device=args.device)

    # 1. warm-up (allocator, kernels, oneDNN / cuDNN choices) on a slice, both paths
    warm = config.replace(epochs=1)
    k = min(args.n, 4 * args.batch)
    train_classifier(x[:k], y[:k], xt, yt, args.classes, warm)
    plain_loop(x[:k], y[:k], xt, yt, args.classes, warm, args.workers)

    # 2. the measured runs, alternated so that a busy machine penalises both alike
    images = args.n * args.epochs
    engine_s, plain_s = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        train_classifier(x, y, xt, yt, args.classes, config)
        if config.device.startswith("cuda"):
            torch.cuda.synchronize()
        engine_s.append(time.perf_counter() - t0)
        plain_s.append(plain_loop(x, y, xt, yt, args.classes, config, args.workers))
    engine_rate = images / min(engine_s)
    plain_rate = images / min(plain_s)
    ratio = engine_rate / plain_rate
    print(f"{'loop':<8} {'best s':>8} {'images/s':>10}")
    print(f"{'engine':<8} {min(engine_s):>8.2f} {engine_rate:>10.0f}")
    print(f"{'plain':<8} {min(plain_s):>8.2f} {plain_rate:>10.0f}   "
          f"(DataLoader, {args.workers} worker(s), v2.RandomResizedCrop)")
    print(json.dumps({"claim": "the engine's classifier loop trains at least 0.95x as fast "
                               "as a plain torchvision DataLoader loop on the same data",
                      "ratio": round(ratio, 3), "goal": 0.95, "met": ratio >= 0.95,
                      "benchmark": "eval_throughput", "arch": args.arch, "size": args.size,
                      "n": args.n, "epochs": args.epochs, "batch": args.batch,
                      "device": args.device, "workers": args.workers,
                      "engine_images_per_s": round(engine_rate, 1),
                      "plain_images_per_s": round(plain_rate, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
