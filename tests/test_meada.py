"""ME-ADA: the growing training set, the ascent, exact resume, config checks, one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from engine.config import EvalConfig
from engine.errors import Cancelled, InvalidConfigError
from engine.evaluate import build_classifier, train_classifier
from engine.evaluate.classifier_training import CHECKPOINT, channel_stats
from engine.evaluate.meada import _normalise, _to_uint8, maximisation_phase, perturb, phase_at, phase_every
from engine.progress import CancelToken

pytestmark = pytest.mark.usefixtures("one_thread")


def squares(per_class: int, classes: int = 4, size: int = 8, seed: int = 0):
    """Class c is a 4x4 square of colour c at a random place on dark noise: (N,S,S,3), (N,)."""
    rng = np.random.default_rng(seed)
    y = np.arange(per_class * classes) % classes
    x = rng.integers(0, 60, size=(len(y), size, size, 3), dtype=np.uint8)
    palette = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.uint8)
    for i, c in enumerate(y):
        r0, c0 = rng.integers(0, size - 4 + 1, size=2)
        x[i, r0:r0 + 4, c0:c0 + 4] = palette[c]
    return x, y.astype(np.int64)


def config(**changes) -> EvalConfig:
    base = dict(arch="resnet_tiny", image_size=8, epochs=3, batch_size=16, seed=0,
                augment="meada", meada_every=1, meada_adv_steps=3)
    base.update(changes)
    return EvalConfig(**base)


def chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- the schedule


def test_phases_spread_evenly_by_default_or_every_t_min_epochs():
    auto = EvalConfig(augment="meada", epochs=30)  # K = 2: after epochs 10 and 20
    assert phase_every(auto) == 10
    assert [e for e in range(30) if phase_at(auto, e)] == [10, 20]
    assert [phase_at(auto, e) for e in (10, 20)] == [1, 2]
    fixed = config(epochs=10, meada_every=3, meada_phases=3)
    assert [e for e in range(10) if phase_at(fixed, e)] == [3, 6, 9]
    assert not any(phase_at(config(augment="crop"), e) for e in range(3))


# ----------------------------------------------------------------------------- (1) growth


def test_each_phase_appends_its_images_with_their_labels(tmp_path):
    x, y = squares(8)  # 32 images, 2 steps per epoch
    xt, yt = squares(2, seed=1)
    events = []
    res = train_classifier(x, y, xt, yt, 4, config(), out_dir=tmp_path / "a",
                           progress=events.append)
    # phase 1 perturbs the 32 real images, phase 2 the 64 of the grown set: 32 + 64 appended
    assert res["meada_images"] == 96 and res["num_train"] == 32
    state = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    assert state["meada_x"].shape == (96, 3, 8, 8) and state["meada_x"].dtype == torch.uint8
    assert torch.equal(state["meada_y"], torch.from_numpy(np.concatenate([y, y, y])))
    messages = [e.message for e in events if e.message.startswith("ME-ADA")]
    assert messages == ["ME-ADA phase 1/2: 32 images", "ME-ADA phase 2/2: 64 images"]
    # the schedule is the real mix's: 3 epochs of 2 steps whatever the set's size
    assert events[-1].step == events[-1].total == 6
    # seeded: the same recipe gives the same images and the same training
    again = train_classifier(x, y, xt, yt, 4, config(), out_dir=tmp_path / "b")
    assert again["curves"] == res["curves"]
    assert torch.equal(torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["meada_x"],
                       state["meada_x"])


def test_a_capped_phase_perturbs_a_seeded_subset():
    x, y = squares(6)  # 24 images
    xs, ys = chw(x), torch.from_numpy(y)
    mean, std = channel_stats(xs)
    torch.manual_seed(0)
    model = build_classifier("resnet_tiny", 4, 8)
    cfg = config(meada_batch=10)
    xa, ya = maximisation_phase(model, xs, ys, mean, std, cfg, torch.Generator().manual_seed(3))
    xb, yb = maximisation_phase(model, xs, ys, mean, std, cfg, torch.Generator().manual_seed(3))
    pick = torch.randperm(24, generator=torch.Generator().manual_seed(3))[:10]
    assert xa.shape == (10, 3, 8, 8) and torch.equal(ya, ys[pick])  # labels of the originals
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ----------------------------------------------------------------------------- (2) ascent


def test_ascent_raises_the_loss_and_leaves_the_model_alone():
    x, y = squares(6)
    xs, ys = chw(x), torch.from_numpy(y)
    mean, std = channel_stats(xs)
    torch.manual_seed(0)
    model = build_classifier("resnet_tiny", 4, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(10):  # a little training, so the loss has somewhere to go
        loss = F.cross_entropy(model(_normalise(xs, mean, std)), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}  # weights and BN stats
    grads = [p.grad.clone() for p in model.parameters()]
    out = perturb(model, xs, ys, mean, std, config(meada_adv_steps=15, meada_adv_lr=5.0))
    assert out.dtype == torch.uint8 and out.shape == xs.shape
    assert model.training and all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no step, no BatchNorm update
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)  # no gradient reached the parameters
    changed = (out != xs).flatten(1).any(dim=1)
    assert bool(changed.all())  # every image moved
    model.eval()
    with torch.no_grad():
        l0 = F.cross_entropy(model(_normalise(xs, mean, std)), ys, reduction="none")
        l1 = F.cross_entropy(model(_normalise(out, mean, std)), ys, reduction="none")
    assert float(l1.mean()) > float(l0.mean())  # ascent: the model's loss went up
    assert float((l1 > l0).float().mean()) >= 0.9


def test_back_to_uint8_rounds_and_clamps():
    mean = torch.tensor([0.5, 0.25, 0.0])
    std = torch.tensor([0.25, 0.5, 1.0])
    pixels = torch.tensor([-40.0, 0.4, 127.6, 254.7, 400.0])  # levels, some out of range
    x = torch.stack([(pixels / 255.0 - m) / s for m, s in zip(mean, std)])  # (3, 5)
    out = _to_uint8(x.view(1, 3, 1, 5), mean, std)
    assert out.dtype == torch.uint8
    assert out[0, :, 0].tolist() == [[0, 0, 128, 255, 255]] * 3  # no wrap-around


# ----------------------------------------------------------------------------- (3) resume


def test_resume_after_a_phase_equals_one_run(tmp_path):
    x, y = squares(8)
    xt, yt = squares(2, seed=1)
    cfg = config(epochs=4)  # phases at the start of epochs 2 and 3 (1-based)
    whole = train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "whole")

    token = CancelToken()

    def stop_after_two(event):  # epoch 2 done: its checkpoint holds phase 1's images
        if event.metrics.get("top1") is not None and event.step == 2 * 2:
            token.cancel()

    with pytest.raises(Cancelled):
        train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "split",
                         progress=stop_after_two, cancel=token)
    state = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2 and state["meada_x"].shape[0] == 32
    resumed = train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "split")

    assert resumed["meada_images"] == whole["meada_images"] == 96
    assert resumed["curves"] == whole["curves"]
    w1 = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)
    w2 = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)
    assert torch.equal(w1["meada_x"], w2["meada_x"])
    for k in w1["model"]:
        assert torch.allclose(w1["model"][k].float(), w2["model"][k].float(), atol=1e-5,
                              rtol=0), k


def test_meada_options_do_not_change_other_recipes_checkpoints(tmp_path):
    x, y = squares(4)
    xt, yt = squares(1, seed=1)
    crop = config(augment="crop", epochs=1)
    train_classifier(x, y, xt, yt, 4, crop, out_dir=tmp_path)
    # the crop run is done; a meada option changes nothing, so its checkpoint is accepted
    res = train_classifier(x, y, xt, yt, 4, crop.replace(meada_gamma=3.0), out_dir=tmp_path)
    assert res["curves"]["epoch"] == [1] and "meada_images" not in res
    with pytest.raises(InvalidConfigError, match="another evaluation config"):
        train_classifier(x, y, xt, yt, 4, config(), out_dir=tmp_path)


# ----------------------------------------------------------------------------- (4), (5) refusals


@pytest.mark.parametrize("changes, words", [
    (dict(meada_phases=0), "meada_phases >= 1"),
    (dict(meada_every=-1), "meada_every >= 0"),
    (dict(meada_adv_steps=0), "meada_adv_steps >= 1"),
    (dict(meada_batch=0), "meada_batch >= 1"),
    (dict(meada_adv_lr=0.0), "meada_adv_lr > 0"),
    (dict(meada_gamma=-1.0), "meada_gamma >= 0"),
    (dict(meada_eta=-0.5), "meada_eta >= 0"),
    (dict(epochs=2), "needs more epochs"),  # auto T_min = 1: the 2nd phase would start at 2
    (dict(epochs=6, meada_every=3), "2 x 3 epochs"),
    (dict(processes=2), "one process"),
])
def test_bad_meada_options_are_named_errors(changes, words):
    with pytest.raises(InvalidConfigError, match=words):
        config(**changes)


def test_short_runs_are_fine_without_meada():
    assert EvalConfig(augment="crop", epochs=1, processes=2).epochs == 1
    assert config(epochs=3, meada_every=0).epochs == 3  # auto: after epochs 1 and 2


def test_several_processes_are_refused_before_any_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    x, y = squares(2)
    with pytest.raises(InvalidConfigError, match="meada runs on one process"):
        train_classifier(x, y, x, y, 4, config())
    assert not dist.is_initialized()
