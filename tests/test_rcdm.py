"""engine.rcdm: tiny real U-Nets (8x8, block_channels (8, 16)), a few steps each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file

from engine.config import GenerateConfig, TrainConfig
from engine.errors import Cancelled, DatasetError, InvalidConfigError, NotReadyError, StudioError
from engine.progress import CancelToken
from engine.rcdm.generation import generate_variations
from engine.rcdm.model import build_rcdm, load_rcdm, save_rcdm
from engine.rcdm.sample import guided_eps, make_scheduler, sample_images, to_uint8
from engine.rcdm.training import pixels_to_tensor, train_rcdm

D = 5
TINY = TrainConfig(image_size=8, block_channels=(8, 16), cross_attention_dim=16,
                   attention_head_dim=8, cond_tokens=2, steps=20, batch_size=4, warmup_steps=3,
                   checkpoint_every=1000, preview_every=1000, learning_rate=1e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_data(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8, 8, 3) uint8 images and (n, D) float32 representations."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    cond = rng.normal(size=(n, D)).astype(np.float32)
    return pixels, cond


def tiny_model(seed: int = 0, config: TrainConfig = TINY):
    torch.manual_seed(seed)
    model = build_rcdm(config, D).eval()
    with torch.no_grad():  # a non-zero null embedding, so that dropping the condition matters
        model.null_cond.normal_()
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    torch.set_num_threads(1)
    pixels, cond = tiny_data()
    out = tmp_path_factory.mktemp("run")
    events = []
    result = train_rcdm(pixels, cond, TINY.replace(steps=10, preview_every=5), out,
                        progress=events.append, extra={"encoder": "test"})
    return {"result": result, "events": events, "out": out, "cond": cond}


def test_build_and_forward_shapes():
    model = tiny_model()
    cfg = model.unet.config
    assert cfg.class_embed_type == "projection"
    assert cfg.projection_class_embeddings_input_dim == D
    assert tuple(cfg.down_block_types) == ("DownBlock2D", "CrossAttnDownBlock2D")
    # diffusers reads attention_head_dim as a number of heads: 16 channels / 8 per head = 2
    assert tuple(cfg.attention_head_dim) == (1, 2)
    assert model.cond_proj.out_features == TINY.cond_tokens * TINY.cross_attention_dim
    x, t, c = torch.randn(3, 3, 8, 8), torch.tensor([0, 500, 999]), torch.randn(3, D)
    with torch.no_grad():
        eps = model(x, t, c)
        c_in, tokens = model.condition(c)
    assert eps.shape == (3, 3, 8, 8)
    assert tokens.shape == (3, TINY.cond_tokens, TINY.cross_attention_dim)
    with pytest.raises(InvalidConfigError):
        model(x, t, torch.randn(3, D + 1))


def test_dropped_condition_is_the_null_embedding():
    model = tiny_model()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 700])
    drop = torch.tensor([True, False])
    with torch.no_grad():
        a = model(x, t, torch.randn(2, D), drop)
        b = model(x, t, torch.randn(2, D), drop)
        null = model(x, t, model.null_cond.expand(2, D), None)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[0], null[0], atol=1e-6)
    assert not torch.allclose(a[1], b[1])


def test_save_load_round_trip(tmp_path: Path):
    model = tiny_model(seed=1)
    folder = save_rcdm(model, tmp_path / "m", TINY, D, {"encoder": "pca", "dataset_id": "ds1"})
    loaded, config, extra = load_rcdm(folder)
    # saved with the channels it makes (TINY leaves them to the data: None)
    assert config == TINY.replace(channels=3) and extra == {"encoder": "pca", "dataset_id": "ds1"}
    x, t, c = torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 300, 999]), torch.randn(4, D)
    drop = torch.tensor([False, True, False, True])
    with torch.no_grad():
        assert torch.equal(model(x, t, c, drop), loaded(x, t, c, drop))
    # plain diffusers reads the U-Net on its own
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    for (k, v), (k2, v2) in zip(model.unet.state_dict().items(), unet.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    meta = json.loads((folder / "rcdm.json").read_text())
    assert meta["format_version"] == 1 and meta["cond_dim"] == D
    assert set(load_file(str(folder / "conditioner.safetensors"))) == {
        "cond_norm.weight", "cond_norm.bias", "cond_proj.weight", "cond_proj.bias",
        "token_norm.weight", "token_norm.bias", "null_cond"}
    # saving again replaces the folder whole
    save_rcdm(tiny_model(seed=2), folder, TINY, D, {})
    assert not torch.equal(load_rcdm(folder)[0].null_cond, model.null_cond)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_errors(tmp_path: Path):
    with pytest.raises(NotReadyError, match="missing"):
        load_rcdm(tmp_path / "nothing")
    folder = save_rcdm(tiny_model(), tmp_path / "m", TINY, D, {})
    meta = json.loads((folder / "rcdm.json").read_text())
    (folder / "rcdm.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(StudioError, match="format_version=99"):
        load_rcdm(folder)
    (folder / "conditioner.safetensors").unlink()
    with pytest.raises(NotReadyError, match="conditioner.safetensors"):
        load_rcdm(folder)


def test_scheduler_fixed_numbers():
    ddpm = make_scheduler("ddpm", TrainConfig())
    # squaredcos_cap_v2: abar(t) = cos(((t / T) + 0.008) / 1.008 * pi / 2) ** 2
    # (computed with the float64 formula, the scheduler keeps float32)
    assert float(ddpm.alphas_cumprod[0]) == pytest.approx(0.99995872, abs=1e-7)
    assert float(ddpm.alphas_cumprod[499]) == pytest.approx(0.49384359, abs=1e-6)
    assert float(ddpm.alphas_cumprod[999]) == pytest.approx(2.43e-9, abs=1e-10)
    ddim = make_scheduler("ddim", TrainConfig())
    ddim.set_timesteps(10)
    assert ddim.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    dpm = make_scheduler("dpm++", TrainConfig())
    assert dpm.config.algorithm_type == "dpmsolver++"
    with pytest.raises(InvalidConfigError):
        make_scheduler("euler", TrainConfig())


def test_pixel_scaling_fixed_numbers():
    pixels = np.array([[[[0, 128, 255]]]], dtype=np.uint8)  # (1, 1, 1, 3)
    x = pixels_to_tensor(pixels)  # (1, 3, 1, 1)
    assert x.flatten().tolist() == pytest.approx([-1.0, 0.003921569, 1.0], abs=1e-7)
    assert to_uint8(x).tolist() == pixels.tolist()


def test_train_outputs(trained):
    result, events, out = trained["result"], trained["events"], trained["out"]
    assert result["steps_done"] == 10 and np.isfinite(result["final_loss"])
    assert result["losses"][-1][0] == 10
    assert Path(result["model_dir"]) == out / "model"
    model, config, extra = load_rcdm(Path(result["model_dir"]))
    assert config == TINY.replace(steps=10, preview_every=5, channels=3)  # colour pixels
    assert extra["encoder"] == "test" and extra["steps_done"] == 10 and extra["ema"] is True
    train_events = [e for e in events if e.stage == "train"]
    assert train_events[-1].step == 10 and set(train_events[-1].metrics) == {"loss", "lr"}
    # linear warm-up over 3 steps then cosine to 0 at step 10; reported after step 5
    lr5 = next(e.metrics["lr"] for e in train_events if e.step == 5)
    assert lr5 == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * (5 - 3) / (10 - 3))))
    assert train_events[-1].metrics["lr"] == 0.0
    previews = [e.preview for e in train_events if e.preview]
    assert [Path(p).name for p in previews] == ["step_000005.png", "step_000010.png"]
    with Image.open(previews[-1]) as img:  # 2 rows (real, sampled) of 8 tiles, upscaled 6x
        assert img.size == (8 * 8 * 6, 2 * 8 * 6)


def _run(out: Path, config: TrainConfig, stop_at: int | None = None) -> None:
    pixels, cond = tiny_data()
    cancel = CancelToken()

    def progress(event):
        if stop_at is not None and event.stage == "train" and event.step >= stop_at:
            cancel.cancel()

    train_rcdm(pixels, cond, config, out, progress=progress, cancel=cancel)


def test_cancel_raises_and_leaves_checkpoint(tmp_path: Path):
    with pytest.raises(Cancelled, match="step 5/20"):
        _run(tmp_path, TINY, stop_at=5)
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 5
    assert not (tmp_path / "model").exists()


def test_resume_is_exact(tmp_path: Path):
    config = TINY.replace(hflip=True, cond_dropout=0.3, prediction_type="v_prediction")
    _run(tmp_path / "once", config)
    with pytest.raises(Cancelled):
        _run(tmp_path / "twice", config, stop_at=10)
    _run(tmp_path / "twice", config)  # resumes at step 10
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "once" / "checkpoint" / name))
        b = load_file(str(tmp_path / "twice" / "checkpoint" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (name, k)
    sa = torch.load(tmp_path / "once" / "checkpoint" / "state.pt", weights_only=True)
    sb = torch.load(tmp_path / "twice" / "checkpoint" / "state.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 20
    assert np.allclose(sa["losses"], sb["losses"], atol=1e-6)
    # a different run in the same folder is refused, a longer one continues
    with pytest.raises(InvalidConfigError, match="learning_rate"):
        _run(tmp_path / "twice", config.replace(learning_rate=0.1))
    _run(tmp_path / "twice", config.replace(steps=25))
    assert torch.load(tmp_path / "twice" / "checkpoint" / "state.pt",
                      weights_only=True)["step"] == 25


def test_training_input_errors(tmp_path: Path):
    pixels, cond = tiny_data()
    with pytest.raises(DatasetError, match="shape"):
        train_rcdm(pixels[:, :4], cond, TINY, tmp_path)
    with pytest.raises(DatasetError):
        train_rcdm(pixels, cond[:5], TINY, tmp_path)
    with pytest.raises(StudioError, match="loss became .* at step"):
        train_rcdm(pixels, cond, TINY.replace(learning_rate=1e30, warmup_steps=0), tmp_path,
                   resume=False)


def test_sampling_is_per_seed_whatever_the_batch():
    model = tiny_model()
    cond = np.random.default_rng(1).normal(size=(8, D)).astype(np.float32)
    seeds = np.arange(100, 108)
    for sampler in ("ddpm", "dpm++"):
        config = GenerateConfig(sampler=sampler, steps=6, batch_size=8)
        full = sample_images(model, cond, seeds, config)
        alone = sample_images(model, cond[3:4], seeds[3:4], config.replace(batch_size=1))
        threes = sample_images(model, cond, seeds, config.replace(batch_size=3))
        assert full.shape == (8, 8, 8, 3) and full.dtype == np.uint8
        assert np.abs(full[3].astype(int) - alone[0].astype(int)).max() <= 1
        assert np.abs(full.astype(int) - threes.astype(int)).max() <= 1
        assert not np.array_equal(full[0], full[1])  # different seeds, different images


def test_each_sampler_runs_and_seeds_reproduce():
    model = tiny_model()
    cond = np.random.default_rng(2).normal(size=(2, D)).astype(np.float32)
    outs = {}
    for sampler in ("ddpm", "ddim", "dpm++"):
        config = GenerateConfig(sampler=sampler, steps=4)
        outs[sampler] = sample_images(model, cond, np.array([5, 6]), config)
        assert np.array_equal(outs[sampler], sample_images(model, cond, np.array([5, 6]), config))
    assert not np.array_equal(outs["ddpm"], outs["ddim"])


def test_guidance():
    model = tiny_model()
    x, t, c = torch.randn(3, 3, 8, 8), torch.tensor([999, 500, 20]), torch.randn(3, D)
    with torch.no_grad():
        cond_pass = model(x, t, c)
        null_pass = model(x, t, c, torch.ones(3, dtype=torch.bool))
        assert torch.equal(guided_eps(model, x, t, c, 1.0), cond_pass)
        assert torch.allclose(guided_eps(model, x, t, c, 0.0), null_pass, atol=1e-5)
        expected = null_pass + 3.0 * (cond_pass - null_pass)
        assert torch.allclose(guided_eps(model, x, t, c, 3.0), expected, atol=1e-5)
    cond = np.random.default_rng(3).normal(size=(2, D)).astype(np.float32)
    seeds = np.array([1, 2])
    one = sample_images(model, cond, seeds, GenerateConfig(steps=4, guidance=1.0))
    near_one = sample_images(model, cond, seeds, GenerateConfig(steps=4, guidance=1.000001))
    three = sample_images(model, cond, seeds, GenerateConfig(steps=4, guidance=3.0))
    assert np.abs(one.astype(int) - near_one.astype(int)).max() <= 1  # two-pass path agrees
    assert not np.array_equal(one, three)


def test_generate_variations_writes_and_resumes(trained, tmp_path: Path):
    model_dir = Path(trained["result"]["model_dir"])
    cond = trained["cond"][:3]
    config = GenerateConfig(variations=2, sampler="ddim", steps=3, seed=40, batch_size=4)
    args = (model_dir, cond, ["a", "b", "c"], np.array([0, 2, 2]), ["zero", "one", "two"],
            config, tmp_path)
    rows = generate_variations(*args, model_id="mdl_x")
    assert list(rows.columns) == ["idx", "path", "source_image_id", "label", "class_name",
                                  "seed", "sampler", "steps", "guidance"]
    assert rows["idx"].tolist() == list(range(6))
    assert rows["seed"].tolist() == [40, 41, 42, 43, 44, 45]
    assert rows["source_image_id"].tolist() == ["a", "a", "b", "b", "c", "c"]
    assert Path(rows["path"][5]) == tmp_path.resolve() / "images" / "0002" / "0000005.png"
    with Image.open(rows["path"][3]) as img:
        assert img.size == (8, 8) and img.mode == "RGB"
        assert img.text["rcdm:seed"] == "43" and img.text["rcdm:source"] == "b"
        assert img.text["rcdm:model"] == "mdl_x" and img.text["rcdm:class"] == "two"
        assert img.text["rcdm:sampler"] == "ddim" and img.text["rcdm:steps"] == "3"
        assert img.text["rcdm:guidance"] == "1.0"
        first = np.asarray(img)
    # a rerun writes nothing new; a missing or truncated file is redone, identically
    Path(rows["path"][3]).unlink()
    data = Path(rows["path"][0]).read_bytes()
    Path(rows["path"][0]).write_bytes(data[: len(data) // 2])
    mtimes = {i: Path(rows["path"][i]).stat().st_mtime_ns for i in (1, 2, 4, 5)}
    events = []
    again = generate_variations(*args, model_id="mdl_x", progress=events.append)
    assert again.equals(rows)
    assert events[0].stage == "generate" and events[0].step == 4 and events[-1].step == 6
    assert {i: Path(rows["path"][i]).stat().st_mtime_ns for i in mtimes} == mtimes
    with Image.open(rows["path"][3]) as img:
        assert np.array_equal(np.asarray(img), first)
    with Image.open(rows["path"][0]) as img:
        img.load()
    with pytest.raises(InvalidConfigError, match="D=6"):
        generate_variations(model_dir, np.zeros((1, 6), np.float32), ["a"], np.array([0]),
                            ["zero"], config, tmp_path)


@pytest.mark.parametrize("channels", [3, 1])
def test_streamed_pixels_train_exactly_like_pixels_in_memory(tmp_path, caplog, channels):
    """Pixel space with ``latent_data="stream"`` reads each batch's rows from the memory-
    mapped pixel cache (memory independent of the dataset's size): the same losses and
    weights as every image in memory, with flips, on a subset of rows (the train split),
    for an RGB model and a greyscale one (each batch's rows converted to L)."""
    from engine.rcdm.training import ArrayRows, pixel_bytes, train_rcdm_files

    pixels, cond = tiny_data(12)
    np.save(tmp_path / "pixels.npy", pixels)
    np.save(tmp_path / "cond.npy", cond)
    idx = np.array([0, 2, 3, 5, 7, 8, 9, 11])
    runs = {}
    for mode in ("memory", "stream"):
        config = TINY.replace(steps=3, hflip=True, latent_data=mode, channels=channels)
        caplog.clear()
        with caplog.at_level("INFO", logger="engine.rcdm.training"):
            runs[mode] = train_rcdm_files(tmp_path / "pixels.npy", tmp_path / "cond.npy",
                                          config, tmp_path / mode, index=idx)
        assert ("pixels read per batch" in caplog.text) == (mode == "stream")
    assert runs["memory"]["losses"] == runs["stream"]["losses"]
    a, saved, _ = load_rcdm(Path(runs["memory"]["model_dir"]), load_vae=False)
    b, _, _ = load_rcdm(Path(runs["stream"]["model_dir"]), load_vae=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the same through train_rcdm given rows that are read only when indexed
    rows = ArrayRows(np.load(tmp_path / "pixels.npy", mmap_mode="r", allow_pickle=False), idx)
    again = train_rcdm(rows, cond[idx], TINY.replace(steps=3, hflip=True, latent_data="stream",
                                                     channels=channels), tmp_path / "rows")
    assert again["losses"] == runs["memory"]["losses"]
    assert saved.channels == channels and a.unet.config.in_channels == channels
    assert pixel_bytes(130_000, 64) == 130_000 * 3 * 64 * 64 * 4
