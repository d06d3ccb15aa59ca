"""How long a training run takes on this machine: a few real training steps, timed, cached.

``seconds_per_step(config, cond_dim, cache)`` runs ``train_rcdm`` itself for ``CALIBRATION_STEPS``
steps on random images of the config's size (the same model, optimiser, EMA and loss as a
real run; about a second for the quick preset on a 2-core CPU) and keeps the measured
seconds per step in a small JSON file, keyed by the machine and by what sets a step's cost
(architecture, image size, batch, precision, device). ``estimate(config, seconds)`` turns it
into the run's expected duration.

Pixel space only: a latent run also encodes its images with a VAE first, which this does not
time (``calibratable`` says so).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import TrainConfig

log = logging.getLogger(__name__)

CALIBRATION_STEPS = 4  # the first includes the warm-up: a slight overestimate, never an under
# the fields of a TrainConfig that set the cost of one step (not its length or its schedule)
COST_FIELDS = ("image_size", "channels", "block_channels", "layers_per_block",
               "cross_attention_dim", "cond_tokens", "attention_head_dim", "batch_size",
               "grad_accum", "precision", "device", "space")
# a preview grid (8 EMA samples, DDIM 10 steps) and a checkpoint cost about this many steps
PREVIEW_STEPS_EQUIVALENT = 3
# a measurement is taken again after this long (the machine's load and software change)
MAX_AGE_SECONDS = 7 * 24 * 3600
# one measurement at a time in a process: two at once would slow each other and both be wrong
_MEASURING = threading.Lock()


def calibratable(config: TrainConfig) -> str | None:
    """None when a run of ``config`` can be timed here, else why not (one sentence)."""
    if config.space != "pixel":
        return "no estimate for latent space: the VAE encoding is not timed here"
    if config.processes > 1:
        return "no estimate for several processes"
    return None


def machine_key() -> str:
    """This machine, as far as a step's time goes: host, CPU count, torch threads, GPU."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no-gpu"
    return f"{platform.node()}|{os.cpu_count()}cpu|{torch.get_num_threads()}threads|{gpu}"


def cost_key(config: TrainConfig, cond_dim: int) -> str:
    """What sets a step's cost: the machine, the cost fields of ``config``, ``cond_dim``."""
    values = {k: getattr(config, k) for k in COST_FIELDS}
    values["block_channels"] = list(config.block_channels)
    return machine_key() + "|" + json.dumps(dict(values, cond_dim=int(cond_dim)),
                                            sort_keys=True)


def read_cache(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_seconds(config: TrainConfig, cond_dim: int, cache: Path | None) -> float | None:
    """The seconds per step measured for this machine and cost within ``MAX_AGE_SECONDS``,
    or None."""
    entry = read_cache(cache).get(cost_key(config, cond_dim))
    if not isinstance(entry, dict) or not isinstance(entry.get("seconds_per_step"),
                                                     (int, float)):
        return None
    if time.time() - float(entry.get("measured_at") or 0) > MAX_AGE_SECONDS:
        return None
    return float(entry["seconds_per_step"])


def measure_seconds(config: TrainConfig, cond_dim: int, steps: int = CALIBRATION_STEPS) -> float:
    """Run ``steps`` real training steps of ``config`` on random data; seconds per step.

    Args:
        config: the run to time (pixel space); its ``steps`` and schedule are replaced.
        cond_dim: width D of the representations (the encoding's dimension).
    """
    from engine.rcdm.training import train_rcdm

    rng = np.random.default_rng(0)
    n = config.batch_size
    pixels = rng.integers(0, 256, (n, config.image_size, config.image_size,
                                   config.channels or 3), dtype=np.uint8)  # (N, H, W, C)
    cond = rng.standard_normal((n, cond_dim)).astype(np.float32)  # (N, D)
    short = config.replace(steps=steps, warmup_steps=0, checkpoint_every=steps + 1,
                           preview_every=steps + 1, processes=1)
    with tempfile.TemporaryDirectory(prefix="rcdm-calibrate-") as tmp:
        t0 = time.perf_counter()
        result = train_rcdm(pixels, cond, short, Path(tmp), resume=False)
        wall = time.perf_counter() - t0
    measured = result.get("seconds_per_step")
    return float(measured) if measured else wall / steps


def seconds_per_step(config: TrainConfig, cond_dim: int, cache: Path | None = None
                     ) -> tuple[float, bool]:
    """Seconds per training step of ``config`` on this machine: from ``cache`` when measured
    before, else measured now (``CALIBRATION_STEPS`` steps) and written to ``cache``.

    Returns:
        (seconds per step, True when it was measured just now).

    Raises:
        InvalidConfigError: the config cannot be timed (``calibratable``) or is invalid.
    """
    from engine.errors import InvalidConfigError

    why = calibratable(config)
    if why:
        raise InvalidConfigError(why)
    known = cached_seconds(config, cond_dim, cache)
    if known is not None:
        return known, False
    with _MEASURING:
        known = cached_seconds(config, cond_dim, cache)  # measured while we waited?
        if known is not None:
            return known, False
        seconds = measure_seconds(config, cond_dim)
        if cache is not None:
            _write(Path(cache), cost_key(config, cond_dim), seconds)
    return seconds, True


def _write(path: Path, key: str, seconds: float) -> None:
    """Add one measurement to the cache file (atomically; a failure only logs)."""
    data = read_cache(path)
    data[key] = {"seconds_per_step": seconds, "measured_at": time.time()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        log.warning("cannot write the step-time cache %s", path, exc_info=True)


def estimate(config: TrainConfig, seconds: float) -> float:
    """Expected seconds of a whole run of ``config`` at ``seconds`` per step: its steps plus
    its preview grids and checkpoints."""
    previews = config.steps // max(1, config.preview_every) + 1
    checkpoints = config.steps // max(1, config.checkpoint_every) + 1
    return seconds * (config.steps + PREVIEW_STEPS_EQUIVALENT * (previews + checkpoints))
