"""Training options: min-SNR weighting, bf16 autocast, gradient accumulation, exact resume
with them, and two processes (torchrun, gloo) against one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.config import TrainConfig
from engine.errors import Cancelled, InvalidConfigError
from engine.progress import CancelToken
from engine.rcdm.model import load_rcdm
from engine.rcdm.training import min_snr_weights, train_rcdm

pytestmark = pytest.mark.usefixtures("one_thread")

D = 5
TINY = TrainConfig(image_size=8, block_channels=(8, 16), cross_attention_dim=16,
                   attention_head_dim=8, cond_tokens=2, steps=6, batch_size=16, warmup_steps=2,
                   checkpoint_every=1000, preview_every=1000, learning_rate=1e-3, hflip=True,
                   cond_dropout=0.3)
ROOT = Path(__file__).resolve().parents[1]


def tiny_data(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8),
            rng.normal(size=(n, D)).astype(np.float32))


def _run(out: Path, config: TrainConfig, stop_at: int | None = None) -> dict:
    pixels, cond = tiny_data()
    cancel = CancelToken()

    def progress(event):
        if stop_at is not None and event.stage == "train" and event.step >= stop_at:
            cancel.cancel()

    return train_rcdm(pixels, cond, config, out, progress=progress, cancel=cancel)


def _weights(out: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoint" / name))


def _max_diff(a: dict, b: dict) -> float:
    """The largest difference between two runs' weights."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_min_snr_weights_fixed_numbers():
    abar = torch.tensor([0.5, 0.9, 0.01])  # snr = 1, 9, 1/99
    t = torch.tensor([0, 1, 2])
    snr3 = 1 / 99
    eps = min_snr_weights(abar, t, 5.0, "epsilon")
    v = min_snr_weights(abar, t, 5.0, "v_prediction")
    x0 = min_snr_weights(abar, t, 5.0, "sample")
    assert eps.tolist() == pytest.approx([1.0, 5 / 9, 1.0], rel=1e-6)
    assert v.tolist() == pytest.approx([0.5, 0.5, snr3 / (snr3 + 1)], rel=1e-6)
    assert x0.tolist() == pytest.approx([1.0, 5.0, snr3], rel=1e-6)
    assert min_snr_weights(abar, t, None, "epsilon").tolist() == [1.0, 1.0, 1.0]


def test_min_snr_changes_training(tmp_path: Path):
    a = _run(tmp_path / "plain", TINY.replace(steps=2))
    b = _run(tmp_path / "snr", TINY.replace(steps=2, min_snr_gamma=1.0))
    assert a["losses"][-1][1] != pytest.approx(b["losses"][-1][1])


def _first_moment(out: Path) -> torch.Tensor:
    """Adam's exp_avg of every parameter, flattened (0.1 x the gradient after one step)."""
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)["optimizer"]
    return torch.cat([s["exp_avg"].flatten() for s in state["state"].values()])


def test_grad_accum_gives_the_same_update(tmp_path: Path):
    """Batch 16 in 2 micro-batches of 8 == batch 16 at once (fp32), min-SNR on."""
    config = TINY.replace(min_snr_gamma=5.0, steps=1)
    _run(tmp_path / "one", config)
    _run(tmp_path / "two", config.replace(grad_accum=2))
    # the same gradient, up to float summation order (relative to its largest entry:
    # gradients that are analytically zero are float noise in both runs)
    a, b = _first_moment(tmp_path / "one"), _first_moment(tmp_path / "two")
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    assert float(a.abs().max()) > 0
    # over several steps the loss curves agree (the weights too, up to Adam turning float
    # noise in near-zero gradients into lr-sized steps: compared in the DDP test below)
    one = _run(tmp_path / "one4", config.replace(steps=4))
    two = _run(tmp_path / "two4", config.replace(steps=4, grad_accum=4))
    assert np.allclose(one["losses"], two["losses"], atol=1e-6)
    with pytest.raises(InvalidConfigError, match="multiple of grad_accum"):
        TINY.replace(grad_accum=3)


def test_resume_is_exact_with_accum_and_min_snr(tmp_path: Path):
    config = TINY.replace(grad_accum=2, min_snr_gamma=5.0, prediction_type="epsilon",
                          steps=8)
    _run(tmp_path / "once", config)
    with pytest.raises(Cancelled):
        _run(tmp_path / "twice", config, stop_at=5)
    _run(tmp_path / "twice", config)
    for name in ("model.safetensors", "ema.safetensors"):
        assert _max_diff(_weights(tmp_path / "once", name),
                         _weights(tmp_path / "twice", name)) <= 1e-6
    with pytest.raises(InvalidConfigError, match="min_snr_gamma"):
        _run(tmp_path / "twice", config.replace(min_snr_gamma=1.0, steps=9))
    # grad_accum only changes how a batch is split: a resumption may change it
    _run(tmp_path / "twice", config.replace(grad_accum=1, steps=9))


def test_bf16_autocast_on_cpu(tmp_path: Path):
    fp32 = _run(tmp_path / "fp32", TINY.replace(steps=2))
    bf16 = _run(tmp_path / "bf16", TINY.replace(steps=2, precision="bf16"))
    assert np.isfinite(bf16["final_loss"])
    a, b = _weights(tmp_path / "fp32"), _weights(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 for v in b.values())  # master weights stay fp32
    diff = _max_diff(a, b)
    assert 0 < diff < 1e-2  # the forward ran in bf16, the update is still close
    assert abs(fp32["final_loss"] - bf16["final_loss"]) < 0.05 * fp32["final_loss"]
    with pytest.raises(InvalidConfigError, match="fp16"):
        _run(tmp_path / "fp16", TINY.replace(precision="fp16"))


def test_two_processes_match_one(tmp_path: Path):
    """torchrun, 2 gloo ranks on the CPU, resuming a 1-process checkpoint: each rank takes
    half of every batch; the result equals one process with the same batch split the same
    way (2 micro-batches), and both ranks end with the same weights.

    The same micro-batches (same shapes, so the same kernels on any CPU), DDP's order-free sum
    of two gradients and its exact halving: the weights agree exactly (0.0 measured); 1e-6, a
    thousandth of one AdamW step at lr 1e-3, needs no scale of its own (unlike the classifier's
    bound in tests/test_evaluate_ddp.py, whose BatchNorm statistics are summed in another
    order)."""
    pixels, cond = tiny_data()
    np.save(tmp_path / "pixels.npy", pixels)
    np.save(tmp_path / "cond.npy", cond)
    config = TINY.replace(steps=4, min_snr_gamma=5.0, grad_accum=2)
    reference = _run(tmp_path / "single", config)
    # steps 1-2 in this process (warm-up is 2 steps, so the schedule does not depend on
    # the total yet), steps 3-4 in two processes of half a batch each
    _run(tmp_path / "ddp", config.replace(steps=2))
    (tmp_path / "config.json").write_text(json.dumps(config.replace(grad_accum=1).to_dict()))
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "engine.rcdm.training_ranks",
           "--pixels", str(tmp_path / "pixels.npy"), "--cond", str(tmp_path / "cond.npy"),
           "--out", str(tmp_path / "ddp"), "--config", str(tmp_path / "config.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed training" in proc.stderr and "at step 2" in proc.stderr
    ranks = [json.loads((tmp_path / "ddp" / "ranks" / f"rank_{r}.json").read_text())
             for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]
    assert ranks[0]["steps_done"] == 4
    assert ranks[0]["losses"][-1][0] == reference["losses"][-1][0] == 4
    for name in ("model.safetensors", "ema.safetensors"):
        assert _max_diff(_weights(tmp_path / "ddp", name),
                         _weights(tmp_path / "single", name)) < 1e-6
    model, _, extra = load_rcdm(tmp_path / "ddp" / "model")
    assert extra["world_size"] == 2 and extra["steps_done"] == 4
