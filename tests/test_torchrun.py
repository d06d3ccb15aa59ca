"""The distributed runtime (engine/torchrun/) in one process: what its parts do alone."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.progress import ProgressEvent
from engine.torchrun.batchnorm import GlobalBatchNorm
from engine.torchrun.launcher import forward_progress, rank_errors
from engine.torchrun.ranks import Ranks, weights_digest


def test_ranks_alone_are_the_identity(monkeypatch):
    """Without WORLD_SIZE (or with 1) there is no process group: every rank helper is the
    identity, so a loop written for N processes runs unchanged in one."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ranks = Ranks("cpu")
    model = torch.nn.Linear(2, 2)
    assert (ranks.world, ranks.rank, ranks.main, ranks.device) == (1, 0, True, torch.device("cpu"))
    assert ranks.rows(7) == slice(0, 7)
    assert ranks.wrap(model) is model and ranks.sync_batchnorm(model) is model
    assert ranks.sum([1.5, 0.0]) == [1.5, 0.0]
    assert ranks.any(True) and not ranks.any(False)
    ranks.barrier()
    assert not torch.distributed.is_initialized()


def test_weights_digest_tells_weights_apart():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b[0].weight[0, 0] = torch.nextafter(b[0].weight[0, 0], torch.tensor(2.0))  # one ulp
    assert weights_digest(a) != weights_digest(b)
    assert len(weights_digest(a.to(torch.bfloat16))) == 40  # any dtype, bf16 included


def test_rank_errors_and_progress_forwarding(tmp_path: Path):
    log = ("[rank 0] 2026-12-01 10:00:00 ERROR engine.x: cond contains NaN\n"
           "[rank 1] 2026-12-01 10:00:00 ERROR engine.x: cond contains NaN\n"
           "[rank 1] 2026-12-01 10:00:00 WARNING engine.x: not an error\n"
           "torchrun: ERROR: child failed\n")
    assert rank_errors(log) == "cond contains NaN"
    path = tmp_path / "progress.jsonl"
    event = ProgressEvent(stage="train", step=1, total=4, metrics={"loss": 0.5})
    path.write_text(json.dumps(event.to_dict()) + "\n" + '{"stage": "tr', encoding="utf-8")
    got: list[ProgressEvent] = []
    offset = forward_progress(path, 0, got.append)  # the cut-short last line waits
    assert [(e.stage, e.step, e.metrics) for e in got] == [("train", 1, {"loss": 0.5})]
    assert forward_progress(path, offset, got.append) == offset and len(got) == 1


def test_global_batchnorm_is_batchnorm_in_one_process(tmp_path: Path, one_thread):
    """With a process group of one, GlobalBatchNorm gives BatchNorm2d's outputs, gradients
    and running statistics (within float error)."""
    import torch.distributed as dist

    torch.manual_seed(0)
    x = torch.randn(6, 5, 4, 4) * 3 + 1
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    gbn = GlobalBatchNorm(5)
    gbn.load_state_dict(bn.state_dict())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        outs = []
        for module in (bn, gbn):
            xi = x.clone().requires_grad_(True)
            y = module(xi)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            outs.append((y.detach(), xi.grad, module.weight.grad, module.running_var.clone()))
    finally:
        dist.destroy_process_group()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    gbn.eval()
    torch.testing.assert_close(gbn(x), bn.eval()(x))
