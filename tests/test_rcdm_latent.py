"""Latent RCDMs and presets: a tiny AutoencoderKL built from a config (no downloads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from engine.config import GenerateConfig, TrainConfig
from engine.errors import InvalidConfigError, WeightsNotFoundError
from engine.rcdm.latent import LatentCodec, cache_name, cached_latents, encode_pixels, load_vae, vae_info
from engine.rcdm.model import load_rcdm, unet_kwargs
from engine.rcdm.presets import IMAGENET100_TRAIN_IMAGES, preset_config, preset_parameters
from engine.rcdm.sample import sample_images
from engine.rcdm.training import train_rcdm

pytestmark = pytest.mark.usefixtures("one_thread")

D = 5
LATENT = TrainConfig(space="latent", image_size=16, block_channels=(8, 16),
                     cross_attention_dim=16, attention_head_dim=8, cond_tokens=2, steps=4,
                     batch_size=4, warmup_steps=1, checkpoint_every=1000, preview_every=4,
                     learning_rate=1e-3, hflip=True)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """A tiny AutoencoderKL (factor 2, 4 latent channels) saved like a hub folder."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                        layers_per_block=1, scaling_factor=0.5)
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


def tiny_data(n: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8),
            rng.normal(size=(n, D)).astype(np.float32))


def test_latent_train_save_load_sample(vae_dir: Path, tmp_path: Path):
    pixels, cond = tiny_data()
    config = LATENT.replace(vae_id=str(vae_dir))
    result = train_rcdm(pixels, cond, config, tmp_path / "run", extra={"encoder": "test"})
    # latents cached once in the run folder: the images and their mirror images
    caches = sorted(p.name for p in (tmp_path / "run" / "latents").glob("*.npy"))
    assert caches == sorted([cache_name(str(vae_dir), 16), cache_name(str(vae_dir), 16, True)])
    meta = json.loads((Path(result["model_dir"]) / "rcdm.json").read_text())
    assert meta["vae"] == {"vae_id": str(vae_dir.resolve()), "scaling_factor": 0.5,
                           "shift_factor": 0.0, "downsample": 2, "latent_channels": 4}
    model, loaded_config, _ = load_rcdm(Path(result["model_dir"]))
    assert loaded_config == config.replace(channels=3) and model.codec is not None
    assert model.unet.config.in_channels == 4 and model.unet.config.sample_size == 8
    images = sample_images(model, cond[:3], np.array([1, 2, 3]),
                           GenerateConfig(sampler="ddim", steps=3, batch_size=2))
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    again = sample_images(model, cond[:1], np.array([1]), GenerateConfig(sampler="ddim", steps=3))
    assert np.abs(again[0].astype(int) - images[0].astype(int)).max() <= 1
    with Image.open(tmp_path / "run" / "previews" / "step_000004.png") as img:
        assert img.size == (8 * 16 * 3, 2 * 16 * 3)  # real row + decoded samples, upscaled 3x
    # the U-Net alone is not enough to sample pixels: without the VAE there is no codec
    bare, _, _ = load_rcdm(Path(result["model_dir"]), load_vae=False)
    assert bare.codec is None


def test_latent_cache_is_reused_and_exact(vae_dir: Path, tmp_path: Path):
    pixels, _ = tiny_data(6)
    first = cached_latents(pixels, str(vae_dir), tmp_path, flip=True)
    path = tmp_path / cache_name(str(vae_dir), 16)
    mtime = path.stat().st_mtime_ns
    second = cached_latents(pixels, str(vae_dir), tmp_path, flip=True, latent_scale=0.25)
    assert path.stat().st_mtime_ns == mtime  # not encoded again
    assert np.array_equal(first.raw, second.raw) and second.info["scaling_factor"] == 0.25
    vae = load_vae(str(vae_dir))
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean.numpy()
        mean_flipped = vae.encode(x.flip(-1)).latent_dist.mean.numpy()
    assert first.raw.shape == (6, 4, 8, 8)
    assert np.allclose(first.raw, mean, atol=1e-5)
    assert np.allclose(first.flipped, mean_flipped, atol=1e-5)
    assert np.allclose(encode_pixels(vae, pixels, batch_size=4), mean, atol=1e-5)
    # a pixel array of another size is another cache
    assert cache_name(str(vae_dir), 32) != cache_name(str(vae_dir), 16)


def test_codec_scaling_fixed_numbers(vae_dir: Path):
    vae = load_vae(str(vae_dir))
    codec = LatentCodec(vae, {**vae_info(vae, str(vae_dir)), "scaling_factor": 0.5,
                              "shift_factor": 0.1})
    raw = torch.tensor([0.1, 1.1, -0.9]).view(1, 3, 1, 1)
    assert codec.to_model_space(raw).flatten().tolist() == pytest.approx([0.0, 0.5, -0.5])
    out = codec.decode_uint8(torch.zeros(2, 4, 8, 8))
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8


def test_missing_vae_says_what_to_download(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download "
                                                   "nobody/no-such-vae"):
        load_vae("nobody/no-such-vae")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_vae(str(tmp_path / "missing"))


def test_latent_stage_caches_beside_the_pixels(vae_dir: Path, tmp_path: Path):
    from engine.progress import CancelToken
    from engine.stages import train_stage

    pixels, cond = tiny_data(9)
    np.save(tmp_path / "pixels_16.npy", pixels)
    np.save(tmp_path / "cond.npy", cond)
    config = LATENT.replace(vae_id=str(vae_dir), steps=2, preview_every=1000, hflip=False)
    params = {"config": config.to_dict(), "pixels_path": str(tmp_path / "pixels_16.npy"),
              "cond_path": str(tmp_path / "cond.npy"), "train_idx": [0, 2, 4, 6, 8],
              "out_dir": str(tmp_path / "run"), "extra": {}}
    out = train_stage.run(params, tmp_path, lambda e: None, CancelToken())
    assert out["steps_done"] == 2
    cache = np.load(tmp_path / cache_name(str(vae_dir), 16))
    assert cache.shape == (9, 4, 8, 8)  # the whole dataset, reused by later runs
    assert not (tmp_path / "run" / "latents").exists()


def test_presets():
    assert preset_config("tiny-cpu") == TrainConfig()
    big = preset_config("imagenet256")
    assert big.space == "latent" and big.batch_size == 16 and big.learning_rate == 1e-4
    assert big.steps == math.ceil(125 * IMAGENET100_TRAIN_IMAGES / 16)
    assert preset_config("imagenet256", num_images=1000).steps == math.ceil(125 * 1000 / 16)
    assert preset_config("imagenet256", steps=10, batch_size=32).steps == 10
    kw = unet_kwargs(big, 768, (4, 32))
    assert kw["down_block_types"][0] == "DownBlock2D"  # no attention at 32x32
    assert kw["sample_size"] == 32 and kw["in_channels"] == 4
    with pytest.raises(InvalidConfigError):
        preset_config("huge")


def test_imagenet256_preset_builds_on_meta_device():
    params = preset_parameters("imagenet256")
    assert 150e6 < params < 1.5e9, params
    assert preset_parameters("tiny-cpu", cond_dim=32) < 2e6


def test_gpu_check_smoke_and_refusal(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--smoke"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["smoke"] is True and last["train_images_per_s"] > 0
    assert last["sampling"]["ddpm2"]["shape"] == [2, 16, 16, 3]
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda"]) == 2
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] is True


def test_streamed_latents_train_exactly_like_latents_in_memory(vae_dir: Path, tmp_path: Path,
                                                               caplog):
    """``latent_data="stream"`` reads each batch's latents from the cache (memory independent
    of the dataset's size): the same losses and weights as all latents in memory, with
    flips, on a subset of rows (the train split of a cache of every image)."""
    from engine.rcdm.training import latent_path

    pixels, cond = tiny_data(12)
    idx = np.array([0, 2, 3, 5, 7, 8, 9, 11])
    base = LATENT.replace(vae_id=str(vae_dir), steps=3, preview_every=1000)
    cache = cached_latents(pixels, str(vae_dir), tmp_path / "cache", flip=True)
    runs = {}
    for mode in ("memory", "stream"):
        config = base.replace(latent_data=mode)
        caplog.clear()
        with caplog.at_level("INFO", logger="engine.rcdm.training"):
            runs[mode] = train_rcdm(pixels[idx], cond[idx], config, tmp_path / mode,
                                    latents=cache.subset(idx))
        assert ("read per batch" in caplog.text) == (mode == "stream")
    assert runs["memory"]["losses"] == runs["stream"]["losses"]
    a, _, _ = load_rcdm(Path(runs["memory"]["model_dir"]), load_vae=False)
    b, _, _ = load_rcdm(Path(runs["stream"]["model_dir"]), load_vae=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # a subset reads nothing until asked, then the right rows
    sub = cache.subset(idx)
    assert len(sub.raw) == 8 and sub.raw.shape == (8,) + cache.raw.shape[1:]
    np.testing.assert_array_equal(np.asarray(sub.raw), np.asarray(cache.raw)[idx])
    np.testing.assert_array_equal(sub.flipped[np.array([1, 0])], cache.flipped[[2, 0]])
    assert latent_path("stream", 1) == "stream" and latent_path("memory", 10 ** 15) == "memory"
    assert latent_path("auto", 1) == "memory" and latent_path("auto", 10 ** 15) == "stream"
    with pytest.raises(InvalidConfigError, match="latent_data"):
        LATENT.replace(latent_data="disk")
