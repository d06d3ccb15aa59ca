"""The rank's half of a run on several processes: who am I, on which device, and how the
ranks agree.

A training loop is written once for 1..N processes: it asks ``Ranks`` for its device, its
rows of a batch, the DDP wrapper of its model and the collectives (sum, any, barrier); with
one process (``WORLD_SIZE`` unset or 1) every one of these is the identity and no process
group exists. Several processes are started by torchrun or ``accelerate launch``, which set
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the process group is gloo on the CPU and nccl
on ``cuda:LOCAL_RANK``.

The entry point of a rank module (``engine.rcdm.training_ranks``,
``engine.evaluate.classifier_ranks``) uses ``rank_setup``, ``progress_writer``, ``run_rank``
and ``write_rank_result``; the owner's half is ``engine.torchrun.launcher``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from engine.errors import Cancelled, InvalidConfigError, StudioError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.torchrun.batchnorm import global_batchnorm
from engine.torchrun.launcher import RANKS_DIR

log = logging.getLogger(__name__)
T = TypeVar("T")


class Ranks:
    """This process's place among the ``world`` processes of one run (one alone).

    Args:
        device: the config's device ("cpu", "cuda", ...). With several processes a CUDA
            device becomes ``cuda:LOCAL_RANK``; only "cpu" and "cuda" are allowed then.

    Attributes:
        world: the number of processes; rank: this one's (0 = the main one, which tests,
        reports and writes); device: where this rank computes.
    """

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.device = torch.device(device)
        if self.world == 1:
            return
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
            backend = "nccl"
        elif self.device.type == "cpu":
            self.device = torch.device("cpu")  # one CPU is one device, whatever its index
            backend = "gloo"
        else:
            raise InvalidConfigError(
                f"several processes need device 'cpu' or 'cuda', got {device!r}")
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        log.info("rank %d of %d on %s (%s)", self.rank, self.world, self.device, backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, b: int) -> slice:
        """This rank's rows of a batch of ``b``: ``[r*b//W, (r+1)*b//W)`` (all of it alone)."""
        return slice(self.rank * b // self.world, (self.rank + 1) * b // self.world)

    def sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """``model`` whose BatchNorm layers take their training statistics over the whole
        batch of all ranks (``SyncBatchNorm`` on CUDA, ``GlobalBatchNorm`` on the CPU), the
        parameters and buffers shared, so its state dict is the one of a single process.
        Alone: ``model`` itself."""
        if self.world == 1:
            return model
        if self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return global_batchnorm(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` (its parameters, on this rank's device; gradients averaged
        over the ranks, every rank starting from rank 0's weights); alone: ``model``."""
        if self.world == 1:
            return model
        model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, wrapped: nn.Module, sync: bool):
        """Skip the gradient all-reduce of a micro-batch that is not the step's last."""
        if self.world == 1 or sync:
            return contextlib.nullcontext()
        return wrapped.no_sync()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64); alone: ``values``."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank (a cancel seen by one stops them all)."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.world > 1:
            dist.barrier()


def weights_digest(model: nn.Module) -> str:
    """SHA-1 of the model's state (names, parameters and buffers, their exact bytes, in
    order): equal on two ranks exactly when their weights are."""
    h = hashlib.sha1()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        # the raw bytes of any dtype (bf16 has no numpy type)
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                 .numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- a rank's entry point


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (a temp sibling, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj), encoding="utf-8")
    os.replace(tmp, path)


def write_rank_result(out_dir: Path, rank: int, obj: Any) -> None:
    """``out_dir/ranks/rank_<rank>.json`` (the launcher clears them before a run)."""
    write_json(Path(out_dir) / RANKS_DIR / f"rank_{rank}.json", obj)


def rank_setup() -> tuple[int, CancelToken]:
    """This process's rank (``RANK``, 0 alone), logging that names it (INFO on rank 0,
    warnings elsewhere; the launcher quotes the ERROR lines), and a cancel token set by
    SIGTERM (torchrun passes a job's cancel on as SIGTERM)."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    return rank, cancel


def progress_writer(path: str | None, rank: int) -> ProgressFn:
    """A ProgressFn appending rank 0's events as JSON lines to ``path`` (what the launcher
    forwards); other ranks, or no path, write nothing."""
    if not path or rank != 0:
        return no_progress
    target = Path(path)

    def write(event: ProgressEvent) -> None:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(event.to_dict()) + "\n")

    return write


def run_rank(body: Callable[[], T]) -> tuple[int, T | None]:
    """Run one rank's work: (0, result), or (3, None) when cancelled, (2, None) on a
    ``StudioError`` (logged); the process group is destroyed either way."""
    try:
        return 0, body()
    except Cancelled as exc:
        log.warning("%s", exc)
        return 3, None
    except StudioError as exc:
        log.error("%s", exc)
        return 2, None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
