"""How synthetic images join classifier training: loss weight, batch ratio, separate BatchNorm
statistics, synthetic-then-real curriculum (EvalConfig's mixing options)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.config import SYN_DEFAULTS, EvalConfig, with_overrides
from engine.errors import Cancelled, InvalidConfigError
from engine.evaluate.classifier import build_classifier
from engine.evaluate.classifier_training import (
    CHECKPOINT,
    _config_key,
    _epoch_batches,
    _rows_loss,
    _Schedule,
    check_mixing,
    train_classifier,
)
from engine.evaluate.domain_batchnorm import DomainBatchNorm, batch_domains, separate_batchnorm
from engine.progress import CancelToken
from tests.test_evaluate import blobs

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHT = dict(syn_weight=0.5)
FRACTION = dict(syn_fraction=0.3)
SEPARATE = dict(syn_bn="separate")
CURRICULUM = dict(curriculum="synthetic_then_real", curriculum_split=0.5)
OPTIONS = {"weight": WEIGHT, "fraction": FRACTION, "separate": SEPARATE,
           "curriculum": CURRICULUM}


def config(**changes) -> EvalConfig:
    base = dict(arch="resnet_tiny", image_size=16, epochs=2, batch_size=16, learning_rate=0.4,
                warmup_epochs=1, seed=0)
    base.update(changes)
    return EvalConfig(**base)


def mix(n_real: int = 6, n_syn: int = 4, seed: int = 0):
    """A real + synthetic mix of 4 classes: x (N, 16, 16, 3), y (N,), is_synthetic (N,), the
    real rows first. The synthetic images are brighter (another "domain")."""
    xr, yr = blobs(n_real, seed=seed)
    xs, ys = blobs(n_syn, seed=seed + 100)
    xs = np.clip(xs.astype(np.int16) + 60, 0, 255).astype(np.uint8)
    x, y = np.concatenate([xr, xs]), np.concatenate([yr, ys])
    return x, y, np.arange(len(y)) >= len(yr)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)["model"]


# ----------------------------------------------------------------------------- defaults


def test_defaults_train_exactly_as_before(tmp_path):
    """At their defaults the options change nothing: a mix said to be half synthetic trains
    to the very same weights (bitwise) as the same mix without the mask, and the losses are
    those of the code before the options (pinned: measured on the merge base; the tolerance
    only absorbs another CPU's float rounding, a changed draw or loss moves them by > 1e-2)."""
    x, y = blobs(10)  # 40 images, 3 steps of 16 per epoch
    xt, yt = blobs(4, seed=1)
    cfg = EvalConfig(arch="resnet_tiny", image_size=16, epochs=2, batch_size=16, seed=0)
    plain = train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "plain")
    masked = train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "masked",
                              is_synthetic=np.arange(40) >= 20)
    spelled = train_classifier(x, y, xt, yt, 4, cfg.replace(**SYN_DEFAULTS),
                               out_dir=tmp_path / "spelled", is_synthetic=np.arange(40) >= 20)
    np.testing.assert_allclose(plain["curves"]["train_loss"], [1.3994957, 0.9683737], rtol=1e-3)
    a, b, c = (_weights(tmp_path / k) for k in ("plain", "masked", "spelled"))
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert masked["curves"] == plain["curves"] == spelled["curves"]
    assert masked["num_synthetic"] == 20
    assert "num_synthetic" not in plain
    # older checkpoints resume: the options at their defaults are not part of the config key
    assert "syn_" not in _config_key(cfg) and "curriculum" not in _config_key(cfg)
    assert "syn_weight" in _config_key(cfg.replace(syn_weight=2.0))


# ----------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("changes, match", [
    (dict(syn_weight=0), "syn_weight must be in .*got 0"),
    (dict(syn_weight=-1.0), "syn_weight must be in .*got -1.0"),
    (dict(syn_weight=10.5), "syn_weight must be in .*got 10.5"),
    (dict(syn_weight="heavy"), "syn_weight must be a number, got 'heavy'"),
    (dict(syn_fraction=0.0), "syn_fraction must be .*got 0.0"),
    (dict(syn_fraction=1.0), "syn_fraction must be .*got 1.0"),
    (dict(syn_bn="mixed"), "syn_bn must be one of .*'mixed'"),
    (dict(curriculum="real_then_synthetic"), "curriculum must be one of .*real_then_synthetic"),
    (dict(curriculum_split=1.0), "curriculum_split must be in .*got 1.0"),
    (dict(curriculum="synthetic_then_real", epochs=1), "one synthetic and one real epoch"),
    (dict(curriculum="synthetic_then_real", curriculum_split=0.1, epochs=4),
     "gives 0 synthetic"),
    (dict(curriculum="synthetic_then_real", syn_fraction=0.5, epochs=4), "choose one"),
    (dict(augment="meada", epochs=6, syn_bn="separate"), "meada .*syn_bn"),
])
def test_bounds_are_refused(changes, match):
    with pytest.raises(InvalidConfigError, match=match):
        EvalConfig(**changes)


def test_options_come_through_set_overrides():
    cfg = with_overrides(EvalConfig(epochs=4), ["syn_weight=0.5", "syn-fraction=0.25",
                                                "syn_bn=separate"])
    assert (cfg.syn_weight, cfg.syn_fraction, cfg.syn_bn) == (0.5, 0.25, "separate")
    assert with_overrides(cfg, ["syn_fraction=null"]).syn_fraction is None
    cur = with_overrides(EvalConfig(epochs=5), ["curriculum=synthetic_then_real"])
    assert cur.curriculum_epochs() == 3  # 2.5 rounded half up
    with pytest.raises(InvalidConfigError, match="syn_weight"):
        with_overrides(EvalConfig(), ["syn_weight=0"])


def test_the_mix_must_serve_the_options():
    x, y, syn = mix()
    xt, yt = blobs(2, seed=1)
    with pytest.raises(InvalidConfigError, match="pass is_synthetic"):
        train_classifier(x, y, xt, yt, 4, config(**WEIGHT))
    with pytest.raises(InvalidConfigError, match=r"is_synthetic must be a \(40,\) bool"):
        train_classifier(x, y, xt, yt, 4, config(**WEIGHT), is_synthetic=syn[:-1])
    real_only = np.zeros(len(y), bool)
    for changes in (FRACTION, CURRICULUM):
        with pytest.raises(InvalidConfigError, match="24 real and 0 synthetic|40 real and 0"):
            train_classifier(x, y, xt, yt, 4, config(**changes), is_synthetic=real_only)
    with pytest.raises(InvalidConfigError, match="syn_bn=separate .* has none"):
        train_classifier(x, y, xt, yt, 4, config(**SEPARATE), is_synthetic=~real_only)
    # the same checks before any training, for a caller that knows the mix's parts
    check_mixing(config(**FRACTION), 10, 5)
    with pytest.raises(InvalidConfigError, match="10 real and 0 synthetic"):
        check_mixing(config(**CURRICULUM), 10, 0)


# ----------------------------------------------------------------------------- each option


def test_syn_weight_scales_the_synthetic_rows_loss_only():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    kinds = torch.tensor([False, False, False, True, True, True])
    per_row = nn.functional.cross_entropy(logits, labels, reduction="none")
    cfg = config(syn_weight=3.0, label_smoothing=0.1)
    per_row_smooth = nn.functional.cross_entropy(logits, labels, reduction="none",
                                                 label_smoothing=0.1)
    expected = (per_row_smooth[:3].sum() + 3.0 * per_row_smooth[3:].sum()) / 6
    got = _rows_loss(logits, labels, nn.CrossEntropyLoss(label_smoothing=0.1), kinds, cfg)
    assert torch.allclose(got, expected, rtol=1e-6)
    assert torch.allclose(_rows_loss(logits, labels, nn.CrossEntropyLoss(), kinds, config()),
                          per_row.mean())
    # in training: without synthetic rows the weight changes nothing (up to the rounding of
    # a per-row mean), with them it changes the run by far more
    x, y, syn = mix()
    xt, yt = blobs(2, seed=1)
    base = train_classifier(x, y, xt, yt, 4, config(), is_synthetic=syn)
    none = train_classifier(x, y, xt, yt, 4, config(syn_weight=3.0),
                            is_synthetic=np.zeros_like(syn))
    heavy = train_classifier(x, y, xt, yt, 4, config(syn_weight=3.0), is_synthetic=syn)
    np.testing.assert_allclose(none["curves"]["train_loss"], base["curves"]["train_loss"],
                               rtol=1e-4)
    gap = np.abs(np.subtract(heavy["curves"]["train_loss"], base["curves"]["train_loss"]))
    assert gap.max() > 1e-2 * max(base["curves"]["train_loss"]), gap


def test_syn_fraction_composes_every_batch():
    """20 real, 7 synthetic, batch 8, fraction 0.25: 2 synthetic and 6 real per batch, an
    epoch is ceil(20 / 6) = 4 batches, every real image exactly once, the 8 synthetic draws
    cover the 7 images (one twice)."""
    syn = torch.arange(27) >= 20
    cfg = config(syn_fraction=0.25, batch_size=8, epochs=3)
    sched = _Schedule.of(27, 7, cfg)
    assert (sched.batch, sched.syn_per_batch, sched.epoch_steps) == (8, 2, (4, 4, 4))
    assert sched.warmup_steps == 4 and sched.total_steps == 12
    generator = torch.Generator().manual_seed(0)
    for epoch in range(3):
        batches = _epoch_batches(epoch, 27, syn, sched, cfg, generator)
        assert len(batches) == 4
        assert [int(syn[b].sum()) for b in batches] == [2, 2, 2, 2]
        assert [int((~syn[b]).sum()) for b in batches] == [6, 6, 6, 2]
        rows = torch.cat(batches)
        assert sorted(rows[~syn[rows]].tolist()) == list(range(20))
        counts = torch.bincount(rows[syn[rows]] - 20, minlength=7)
        assert counts.min() == 1 and counts.max() == 2 and counts.sum() == 8
    # fewer real images than a batch's share: a smaller batch with the same ratio
    small = _Schedule.of(13, 10, config(syn_fraction=0.5, batch_size=16))
    assert (small.batch, small.syn_per_batch, small.epoch_steps) == (6, 3, (1, 1))


def test_syn_fraction_trains_and_counts_its_steps():
    x, y, syn = mix(n_real=6, n_syn=2)  # 24 real, 8 synthetic
    xt, yt = blobs(2, seed=1)
    events = []
    res = train_classifier(x, y, xt, yt, 4, config(syn_fraction=0.5), progress=events.append,
                           is_synthetic=syn)
    # batch 16 = 8 real + 8 synthetic; an epoch, one pass over the real: ceil(24 / 8) = 3
    assert events[-1].step == events[-1].total == 2 * 3
    assert res["num_train"] == 32 and res["num_synthetic"] == 8


def test_curriculum_first_epochs_see_only_synthetic_rows():
    syn = torch.arange(30) >= 18  # 18 real, 12 synthetic
    cfg = config(batch_size=8, epochs=5, warmup_epochs=3, curriculum="synthetic_then_real",
                 curriculum_split=0.4)
    sched = _Schedule.of(30, 12, cfg)
    assert sched.epoch_steps == (2, 2, 3, 3, 3) and sched.warmup_steps == 7
    generator = torch.Generator().manual_seed(0)
    for epoch in range(5):
        rows = torch.cat(_epoch_batches(epoch, 30, syn, sched, cfg, generator))
        expected = range(18, 30) if epoch < 2 else range(18)
        assert sorted(rows.tolist()) == list(expected), epoch


def test_curriculum_trains_and_reports_its_phases():
    x, y, syn = mix(n_real=6, n_syn=2)  # 24 real, 8 synthetic, batch 16
    xt, yt = blobs(2, seed=1)
    events = []
    res = train_classifier(x, y, xt, yt, 4, config(epochs=3, **CURRICULUM),
                           progress=events.append, is_synthetic=syn)
    assert events[-1].total == 2 * 1 + 1 * 2  # 2 synthetic epochs of 1 batch, 1 real of 2
    assert [e.step for e in events if "top1" in e.metrics] == [1, 2, 4]
    assert res["curves"]["epoch"] == [1, 2, 3]


# ----------------------------------------------------------------------------- separate BN


def test_domain_batchnorm_normalises_each_kind_apart():
    torch.manual_seed(0)
    x = torch.randn(10, 3, 4, 4)
    x[6:] = x[6:] * 3.0 + 5.0  # the synthetic rows: another mean and scale
    syn = torch.arange(10) >= 6
    plain = nn.BatchNorm2d(3)
    nn.init.uniform_(plain.weight)
    nn.init.uniform_(plain.bias)
    domain = separate_batchnorm(nn.Sequential(copy.deepcopy(plain)))[0]
    assert isinstance(domain, DomainBatchNorm)
    reference = copy.deepcopy(plain).train()
    syn_only = copy.deepcopy(plain).train()
    for _ in range(3):  # running statistics over several steps
        with batch_domains(nn.Sequential(domain), syn):
            out = domain.train()(x)
        real_out = reference(x[~syn])
        syn_out = syn_only(x[syn])
        torch.testing.assert_close(out[~syn], real_out, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out[syn], syn_out, rtol=1e-4, atol=1e-5)
    # running statistics: the real rows' only
    torch.testing.assert_close(domain.running_mean, reference.running_mean)
    torch.testing.assert_close(domain.running_var, reference.running_var)
    assert int(domain.num_batches_tracked) == 3
    assert domain.is_synthetic is None  # cleared after the forward pass
    # a batch without real rows leaves them alone; eval mode is plain BatchNorm
    before = domain.running_mean.clone()
    with batch_domains(nn.Sequential(domain), torch.ones(4, dtype=torch.bool)):
        domain(x[6:])
    assert torch.equal(domain.running_mean, before)
    torch.testing.assert_close(domain.eval()(x), reference.eval()(x))


@pytest.mark.parametrize("arch", ["resnet_tiny", "resnet18"])
def test_separate_batchnorm_running_statistics_are_the_real_images(arch):
    """A training forward pass of a real + synthetic batch leaves in every BatchNorm layer of
    the network the running statistics a plain model gets from the real rows alone."""
    torch.manual_seed(0)
    model = build_classifier(arch, 4, 8).train()
    plain = copy.deepcopy(model)
    separate = separate_batchnorm(model)
    assert separate.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(10, 3, 8, 8)
    x[:4] = x[:4] * 2.0 + 1.5  # synthetic rows, another domain
    syn = torch.arange(10) < 4
    with batch_domains(separate, syn):
        separate(x)
    plain(x[~syn])
    a, b = separate.state_dict(), plain.state_dict()
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert len(stats) >= 7
    for k in stats:
        scale = float(b[k].abs().max()) + 1e-6
        assert float((a[k] - b[k]).abs().max()) <= 1e-4 * scale, k


def test_separate_batchnorm_trains_and_its_checkpoint_is_a_plain_model(tmp_path):
    x, y, syn = mix()
    xt, yt = blobs(2, seed=1)
    res = train_classifier(x, y, xt, yt, 4, config(**SEPARATE), out_dir=tmp_path,
                           is_synthetic=syn)
    shared = train_classifier(x, y, xt, yt, 4, config(), is_synthetic=syn)
    assert res["curves"]["train_loss"] != shared["curves"]["train_loss"]
    build_classifier("resnet_tiny", 4, 16).load_state_dict(_weights(tmp_path))


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_resume_with_each_option(tmp_path, name):
    x, y, syn = mix(n_real=6, n_syn=3)
    xt, yt = blobs(2, seed=1)
    cfg = config(epochs=4, **OPTIONS[name])
    events = []
    whole = train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "whole",
                             progress=events.append, is_synthetic=syn)
    after_two = [e.step for e in events if "top1" in e.metrics][1]  # epoch 2's last step
    token = CancelToken()

    def stop_after_two(event):
        if "top1" in event.metrics and event.step == after_two:
            token.cancel()

    with pytest.raises(Cancelled):
        train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "split",
                         progress=stop_after_two, cancel=token, is_synthetic=syn)
    assert torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)["epoch"] == 2
    resumed = train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "split",
                               is_synthetic=syn)
    assert resumed["curves"] == whole["curves"] and resumed["top1"] == whole["top1"]
    w1, w2 = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    for k in w1:
        assert torch.allclose(w1[k].float(), w2[k].float(), atol=1e-5, rtol=0), k
    # another mixing recipe, or another split of the mix into real and synthetic: refused
    with pytest.raises(InvalidConfigError, match="another evaluation config"):
        train_classifier(x, y, xt, yt, 4, cfg.replace(**SYN_DEFAULTS),
                         out_dir=tmp_path / "split", is_synthetic=syn)
    with pytest.raises(InvalidConfigError, match="another training mix"):
        train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "split",
                         is_synthetic=np.roll(syn, 1))


@pytest.mark.parametrize("augment, changes", [("mixup", dict(syn_weight=2.0, **SEPARATE)),
                                              ("cutmix", FRACTION),
                                              ("randaugment", CURRICULUM)])
def test_options_combine_with_the_augmentations(augment, changes):
    """Soft targets (mixup / cutmix) take the weight of the row's own image; policies and
    batch mixes run on composed batches and curriculum phases alike."""
    x, y, syn = mix(n_real=4, n_syn=2)
    xt, yt = blobs(2, seed=1)
    res = train_classifier(x, y, xt, yt, 4, config(augment=augment, **changes),
                           is_synthetic=syn)
    assert np.isfinite(res["curves"]["train_loss"]).all() and res["num_synthetic"] == 8
