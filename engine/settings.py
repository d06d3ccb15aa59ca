"""A project's settings: device, precision, model folder and per-stage defaults.

Defaults come from the machine (``machine_profile``: CUDA or not, GPU and main memory) and
are overridden by what the user saved in the project (``Project.settings()``), so a project
reopened on another machine keeps its choices. The studio's Settings tab and the command
line read the same values through ``effective`` / ``device``.

The functions take the open project (anything with ``settings()`` and
``update_settings(**values)``, i.e. ``engine.project.Project``); this module sits below the
project layer and imports nothing from it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from engine.config import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_STEPS,
    MAX_VARIATIONS,
    QUICK_TRAIN,
    SAMPLERS,
    EvalConfig,
    TrainConfig,
)
from engine.errors import InvalidConfigError

log = logging.getLogger(__name__)

DEVICES = ["auto", "cpu", "cuda"]
PRECISIONS = ["fp32", "bf16", "fp16"]
# the settings keys a project stores (all optional in the project)
KEYS = ("device", "precision", "model_folder", "train_steps", "train_batch", "gen_sampler",
        "gen_steps", "gen_variations", "eval_epochs")


class SettingsStore(Protocol):
    """What the settings functions need of a project (``engine.project.Project`` has it)."""

    def settings(self) -> dict[str, Any]: ...

    def update_settings(self, **values: Any) -> dict[str, Any]: ...


NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the driver knows


def visible_gpus() -> list[int]:
    """Indices of the CUDA devices this process sees (empty without a GPU).

    Read without importing torch where the machine says enough (the studio's start must not
    wait seconds for it): the NVIDIA driver's device list (``/proc/driver/nvidia/gpus``)
    limited by ``CUDA_VISIBLE_DEVICES`` (up to its first invalid entry, as CUDA reads it);
    no driver and no GPU device node: no GPU. torch decides when it is already loaded, or
    where device nodes exist without the driver's list (ROCm, unusual containers).
    """
    device_nodes = list(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/kfd").exists()
    if "torch" not in sys.modules and not (device_nodes and not NVIDIA_GPUS.is_dir()):
        try:
            found = len(list(NVIDIA_GPUS.iterdir()))
        except OSError:
            found = 0
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is not None:
            listed = 0
            for entry in env.split(","):
                if not entry.strip() or entry.strip().startswith("-"):
                    break
                listed += 1
            found = min(found, listed)
        return list(range(found))
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - no torch, no driver: no GPU
        return []


@functools.lru_cache(maxsize=1)
def machine_profile() -> dict[str, Any]:
    """What this machine offers: ``{"cuda", "gpu", "gpu_mem_gb", "ram_gb", "cpus"}``
    (torch is imported only where a GPU is visible: a CPU machine's studio starts without)."""
    prof: dict[str, Any] = {"cuda": False, "gpu": "", "gpu_mem_gb": 0.0,
                            "cpus": os.cpu_count() or 1, "ram_gb": 0.0}
    if visible_gpus():
        import torch

        prof["cuda"] = bool(torch.cuda.is_available())
    try:
        prof["ram_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        pass
    if prof["cuda"]:
        import torch

        props = torch.cuda.get_device_properties(0)
        prof["gpu"], prof["gpu_mem_gb"] = props.name, props.total_memory / 2 ** 30
    return prof


def machine_defaults(prof: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-stage defaults sized for the machine (the engine's CPU-sized defaults on a CPU)."""
    prof = prof or machine_profile()
    # a CPU trains the quick preset (the Train tab's default there): its steps and batch
    d = {"device": "auto", "precision": "fp32", "model_folder": "",
         "train_steps": QUICK_TRAIN["steps"], "train_batch": QUICK_TRAIN["batch_size"],
         # a CPU samples with 25 DDIM steps; a GPU affords the paper's 100 DDPM steps
         "gen_sampler": "ddim", "gen_steps": 25, "gen_variations": 2,
         "eval_epochs": EvalConfig.epochs}
    if prof["cuda"]:
        mem = prof["gpu_mem_gb"]
        d["precision"] = "bf16"
        d["train_batch"] = 256 if mem >= 20 else 128
        d["train_steps"] = max(TrainConfig.steps, 5000)
        d["gen_sampler"], d["gen_steps"] = "ddpm", 100
    return d


def effective(project: SettingsStore) -> dict[str, Any]:
    """Machine defaults overridden by the project's saved settings."""
    out = machine_defaults()
    saved = project.settings()
    out.update({k: v for k, v in saved.items() if k in KEYS and v not in (None, "")})
    return out


def device(project: SettingsStore) -> str:
    """The torch device jobs run on: the setting, ``auto`` -> cuda when available."""
    d = str(effective(project).get("device") or "auto")
    if d == "auto":
        return "cuda" if machine_profile()["cuda"] else "cpu"
    return d


def worker_environment(project: SettingsStore) -> dict[str, str]:
    """The environment a worker of ``project`` gets on top of its owner's: the hub cache in
    the project's model folder (set per job, so projects open side by side in one studio
    each keep their own)."""
    folder = str(effective(project).get("model_folder") or "").strip()
    return {"HF_HOME": folder, "HF_HUB_CACHE": str(Path(folder) / "hub")} if folder else {}


def apply_environment(project: SettingsStore) -> None:
    """Point the hub cache at the project's model folder (``HF_HOME`` / ``HF_HUB_CACHE`` of
    this process, inherited by every worker it starts)."""
    folder = str(effective(project).get("model_folder") or "").strip()
    if folder:
        os.environ["HF_HOME"] = folder
        os.environ["HF_HUB_CACHE"] = str(Path(folder) / "hub")


def save(project: SettingsStore, values: dict[str, Any]) -> dict[str, Any]:
    """Validate ``values`` (one per key of ``KEYS``), store them in the project and apply the
    model folder to the environment. Returns the stored settings.

    Raises:
        InvalidConfigError: an unknown device / precision / sampler, a non-positive number,
            a model folder that is not a writable directory.
    """
    v = dict(values)
    if v.get("device") not in DEVICES and not str(v.get("device", "")).startswith("cuda:"):
        raise InvalidConfigError(f"device must be one of {DEVICES} or cuda:N, got "
                                 f"{v.get('device')!r}")
    if v["device"] != "auto" and v["device"].startswith("cuda") and \
            not machine_profile()["cuda"]:
        raise InvalidConfigError(f"device {v['device']!r}: this machine has no CUDA GPU")
    if v.get("precision") not in PRECISIONS:
        raise InvalidConfigError(f"precision must be one of {PRECISIONS}, got "
                                 f"{v.get('precision')!r}")
    if v.get("gen_sampler") not in SAMPLERS:
        raise InvalidConfigError(f"sampler must be one of {list(SAMPLERS)}, got "
                                 f"{v.get('gen_sampler')!r}")
    limits = {"train_steps": MAX_STEPS, "train_batch": MAX_BATCH, "gen_steps": 1000,
              "gen_variations": MAX_VARIATIONS, "eval_epochs": MAX_EPOCHS}  # the configs' bounds
    for key, high in limits.items():
        try:
            n = int(v.get(key) or 0)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidConfigError(f"{key.replace('_', ' ')} must be a whole number, got "
                                     f"{v.get(key)!r}") from exc
        if n < 1:
            raise InvalidConfigError(f"{key.replace('_', ' ')} must be >= 1, got {n}")
        if n > high:
            raise InvalidConfigError(f"{key.replace('_', ' ')} must be in [1, {high}], got {n}")
        v[key] = n
    folder = str(v.get("model_folder") or "").strip()
    if folder:
        p = Path(folder).expanduser()
        if not p.is_dir() or not os.access(p, os.W_OK):
            raise InvalidConfigError(f"model folder {folder!r} is not a writable directory")
        folder = str(p.absolute())
    v["model_folder"] = folder
    stored = project.update_settings(**{k: v[k] for k in KEYS})
    apply_environment(project)
    return stored
