"""RCDMs: train, generate (also sharded over machines), merge shards, samplers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.config import (
    EDIT_STRENGTH_MAX,
    GENERATED_FORMATS,
    PERTURB_MAX,
    GenerateConfig,
    TrainConfig,
)
from studio.cli.console import (
    device_arg,
    emit,
    interruptible,
    json_arg,
    machine_device,
    open_project,
    project_arg,
    project_file,
    run_job,
)


def add_parsers(sub: Any) -> None:
    """Add this group's sub-commands to ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("train", help="train an RCDM conditioned on an encoding")
    project_arg(p)
    p.add_argument("--dataset", help="dataset name or id")
    p.add_argument("--encoder", default="pca",
                   help="condition on the dataset's encoding with this encoder "
                        "(class = the class-conditioned baseline)")
    p.add_argument("--name", help="model name")
    p.add_argument("--preset", default="tiny-cpu", choices=["quick", "tiny-cpu", "imagenet256"],
                   help="starting TrainConfig (quick: the quick demo's 0.27 M-parameter "
                        "denoiser, 400 steps, minutes on a CPU; tiny-cpu: 1.0 M parameters, "
                        "1,500 steps; imagenet256: the paper's 256 px latent RCDM, 125 epochs "
                        "of the dataset at batch 16); the options below override it")
    p.add_argument("--steps", type=int, help=f"optimiser steps (tiny-cpu: {TrainConfig.steps})")
    p.add_argument("--batch-size", type=int,
                   help=f"images per optimiser step (tiny-cpu: {TrainConfig.batch_size})")
    p.add_argument("--lr", type=float, help=f"learning rate (tiny-cpu: {TrainConfig.learning_rate})")
    p.add_argument("--image-size", type=int,
                   help=f"training image size in pixels (tiny-cpu: {TrainConfig.image_size})")
    p.add_argument("--cond-dropout", type=float,
                   help="probability of dropping the representation (classifier-free guidance)")
    p.add_argument("--channels", choices=["auto", "1", "3"], default="auto",
                   help="channels of the images the model makes: 1 (greyscale), 3 (RGB), or "
                        "auto (the default): 1 when every training image was greyscale at "
                        "import, else 3")
    p.add_argument("--space", choices=["pixel", "latent"],
                   help="denoise pixels (toy sizes) or the latents of a VAE")
    p.add_argument("--vae", help="AutoencoderKL hub id or local folder for --space latent "
                                 f"(default {TrainConfig.vae_id})")
    p.add_argument("--min-snr-gamma", type=float, help="min-SNR-gamma loss weighting, e.g. 5")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision (fp16 needs CUDA)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step")
    p.add_argument("--latent-data", choices=["auto", "memory", "stream"],
                   help="the training data (latents, or pixels in pixel space): all on the "
                        "device (memory), read per batch from their cache (stream: memory "
                        "independent of the dataset), or memory while they take <= 1/4 of the "
                        "available memory (auto, the default)")
    p.add_argument("--processes", type=int,
                   help="data-parallel processes (one per GPU; gloo processes on the CPU): "
                        "the job runs torchrun and holds that many job slots (default 1)")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune: start from this trained model (a name or id in the "
                        "project, or a model folder with rcdm.json) instead of random "
                        "weights; its architecture and noise schedule are kept, --steps and "
                        "--lr are this run's")
    p.add_argument("--seed", type=int, default=0)
    device_arg(p)
    json_arg(p)

    p = sub.add_parser(
        "import-model", help="add an RCDM trained elsewhere to the project (no training)",
        description="Copy a model folder into the project, ready to generate from (and to "
                    "fine-tune with train --init): a folder of this project's format "
                    "(rcdm.json) or a diffusers UNet2DConditionModel folder (unet/ or the "
                    "U-Net's own config.json + *.safetensors) beside its "
                    "conditioner.safetensors; scheduler/scheduler_config.json, when present, "
                    "gives the noise schedule. The model is tied to the dataset's encoding by "
                    "--encoder, which must be the encoder it was trained on (same "
                    "representation size).")
    project_arg(p)
    p.add_argument("--folder", required=True, help="the model folder")
    p.add_argument("--dataset", help="dataset name or id (default: the only one)")
    p.add_argument("--encoder", default="pca",
                   help="the dataset's encoding by this encoder conditions the model")
    p.add_argument("--encoding", help="or this encoding id")
    p.add_argument("--name", help="model name (default imported-ENCODER)")
    p.add_argument("--vae", help="a latent U-Net's AutoencoderKL (hub id or folder)")
    json_arg(p)

    p = sub.add_parser(
        "generate", help="generate images: variations, interpolations, mix-ups, class samples",
        description="Generate images with a trained RCDM. --mode picks the representations: "
                    "variations of real images (the paper's), interpolate between two images "
                    "(--images A B), mixup within a class, class_sample (new representations "
                    "drawn from each class's Gaussian); --perturb λ adds seeded noise to every "
                    "representation, in any mode; edit moves each source along the direction "
                    "from one class's mean to another's (--direction A:B --strength λ or "
                    "--sweep λ1,λ2,...). --image PATH adds an image file from outside the "
                    "project as a source. With --shard K/P --out DIR it "
                    "generates shard K (0..P-1) of the generation into DIR without writing "
                    "to the project; `generate-merge` ingests the shards.")
    project_arg(p)
    p.add_argument("--model", help="model name or id (default: the latest trained)")
    p.add_argument("--variations", type=int, default=1,
                   help="seeds per representation (per source image in variations mode)")
    p.add_argument("--images", nargs="*",
                   help="source image ids (default: the training split); two for interpolate")
    p.add_argument("--image", action="append", metavar="PATH", dest="image_files",
                   help="an image file outside the project as a source (repeat for more; "
                        "validated like an import, encoded with the model's encoder, copied "
                        "into the generation's folder; its sha256 and name are recorded)")
    p.add_argument("--label", metavar="CLASS",
                   help="the class of the --image files (default: the nearest class centroid "
                        "of the model's training encodings)")
    p.add_argument("--class", dest="source_class", metavar="CLASS",
                   help="every training image of this class as a source (instead of --images)")
    p.add_argument("--mode", default=GenerateConfig.mode,
                   choices=["variations", "interpolate", "mixup", "class_sample", "edit"])
    p.add_argument("--direction", default="", metavar="A:B",
                   help="edit: move from class A's mean representation towards class B's")
    p.add_argument("--strength", type=float, default=GenerateConfig.strength, metavar="λ",
                   help=f"edit: r + λ (mean(B) - mean(A)); |λ| <= {EDIT_STRENGTH_MAX:g} "
                        f"(default {GenerateConfig.strength:g})")
    p.add_argument("--sweep", metavar="λ,λ,...",
                   help="edit: several strengths, one image set per source per λ "
                        "(e.g. 0,0.25,0.5,0.75,1); overrides --strength")
    p.add_argument("--normalise", action="store_true",
                   help="edit: scale the direction to unit length")
    p.add_argument("--processes", type=int, default=1, metavar="P",
                   help="generate on P processes under torchrun (one per GPU; CPU processes "
                        "without one), merged into one generation; every image is the one "
                        "a single process writes")
    p.add_argument("--invert", action="store_true",
                   help="edit / interpolate: invert each source image into the DDPM noise "
                        "space under its own representation and regenerate it under the "
                        "new one with that noise (edit-friendly DDPM inversion): the images "
                        "keep the source's layout; --steps posterior steps, --sampler unused")
    p.add_argument("--points", type=int, default=GenerateConfig.points,
                   help="interpolate: representations on the path, ends included")
    p.add_argument("--per-class", type=int, default=GenerateConfig.per_class,
                   help="mixup / class_sample: new representations per class")
    p.add_argument("--mix-alpha", type=float, default=GenerateConfig.mix_alpha,
                   help="mixup: weights ~ Beta(a, a) (1 = uniform)")
    p.add_argument("--covariance", default=GenerateConfig.covariance,
                   choices=["ledoit_wolf", "diagonal"], help="class_sample: covariance")
    p.add_argument("--perturb", type=float, default=GenerateConfig.perturb, metavar="λ",
                   help="representation perturbation: add Gaussian noise of λ times the "
                        "per-dimension std of the training encodings to each sample's "
                        f"representation, seeded by the sample's seed (0 = off, the default; "
                        f"at most {PERTURB_MAX:g}): more diverse, less faithful images")
    p.add_argument("--sampler", default=GenerateConfig.sampler,
                   help="ddpm (default, 100 steps: the paper's), ddim, dpm++ or a diffusers "
                        "scheduler class name, e.g. EulerDiscreteScheduler (see `samplers`)")
    p.add_argument("--steps", type=int, default=GenerateConfig.steps)
    p.add_argument("--guidance", type=float, default=GenerateConfig.guidance,
                   help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--batch-size", type=int, default=GenerateConfig.batch_size)
    p.add_argument("--format", dest="image_format", default=GenerateConfig.image_format,
                   choices=list(GENERATED_FORMATS),
                   help="file format of the generated images: png (lossless, the default), "
                        "webp or jpeg (lossy at --quality; 3.5-8.5x smaller than PNG at 95 on "
                        "image-like 64-256 px images: docs/BENCHMARKS.md); recorded in the "
                        "generation's config")
    p.add_argument("--quality", type=int, default=GenerateConfig.quality, metavar="Q",
                   help=f"webp / jpeg quality, 1..100 (default {GenerateConfig.quality}); "
                        f"webp at 100 is lossless WebP; png ignores it")
    p.add_argument("--name", help="generation name")
    p.add_argument("--shard", metavar="K/P",
                   help="generate only shard K of P (0 <= K < P) into --out; the project is "
                        "only read (or not opened at all when --out already holds the plan)")
    p.add_argument("--out", metavar="DIR", help="shard output folder (with --shard)")
    p.add_argument("--plan-only", action="store_true",
                   help="write the generation's plan into --out and stop (for workers that "
                        "cannot read the project)")
    p.add_argument("--model-dir", help="with --shard: the model folder on this machine")
    device_arg(p)
    json_arg(p)

    p = sub.add_parser("generate-merge", help="ingest sharded generation outputs",
                       description="Check that the shard folders hold every shard 0..P-1 of "
                                   "one generation, complete and from the same model and "
                                   "options, and ingest them as one generation.")
    project_arg(p)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="shard output folders")
    p.add_argument("--name", help="generation name")
    json_arg(p)

    p = sub.add_parser("samplers", help="list the sampler names --sampler accepts")
    json_arg(p)


def cmd_train(args: argparse.Namespace) -> int:
    from engine import settings
    from engine.project import Model
    from engine.rcdm.presets import preset_config
    from engine.stages import common, train_stage

    given = {"steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
             "image_size": args.image_size, "cond_dropout": args.cond_dropout,
             "space": args.space, "vae_id": args.vae, "min_snr_gamma": args.min_snr_gamma,
             "precision": args.precision, "grad_accum": args.grad_accum,
             "latent_data": args.latent_data,
             "processes": args.processes,
             "channels": None if args.channels == "auto" else int(args.channels)}
    overrides = {k: v for k, v in given.items() if v is not None}
    given_device = args.device
    with open_project(args) as project:
        # an explicit --device, else a device saved in the project's settings; with "auto"
        # the preset keeps its own (quick, tiny-cpu: cpu; imagenet256: cuda)
        if given_device or settings.effective(project)["device"] != "auto":
            overrides["device"] = args.device
        num_train = common.dataset(project, args.dataset).num_train
        config = preset_config(args.preset, num_images=num_train, seed=args.seed, **overrides)
        job = run_job(project, train_stage.prepare(project, config, args.dataset,
                                                   encoder=args.encoder, name=args.name,
                                                   init=args.init))
        m = project.get(Model, job.result_id)
    emit(args, {"id": m.id, "name": m.name, "steps": m.steps_done, "final_loss": m.final_loss},
          f"model {m.name} ({m.id}): {m.steps_done} steps, final loss {m.final_loss:.4f}")
    return 0


def cmd_import_model(args: argparse.Namespace) -> int:
    from engine.project import Model
    from engine.stages import adopt_stage

    with open_project(args) as project:
        job = run_job(project, adopt_stage.prepare(
            project, args.folder, args.dataset, encoder=args.encoder,
            encoding_ref=args.encoding, name=args.name, vae_id=args.vae))
        m = project.get(Model, job.result_id)
        fmt = m.metrics.get("format", "rcdm")
    emit(args, {"id": m.id, "name": m.name, "format": fmt, "encoding": m.encoding_id,
                "checkpoint": m.checkpoint},
         f"model {m.name} ({m.id}) imported from {args.folder} ({fmt} format), conditioned on "
         f"encoding {m.encoding_id}: generate with --model {m.name}")
    return 0


def _sweep(text: str | None) -> tuple[float, ...]:
    from engine.errors import InvalidConfigError

    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidConfigError(f"--sweep takes numbers separated by commas, e.g. "
                                 f"0,0.5,1; got {text!r}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.project import Generation
    from engine.stages import generate_stage

    def config() -> GenerateConfig:
        return GenerateConfig(variations=args.variations, sampler=args.sampler,
                              steps=args.steps, guidance=args.guidance, seed=args.seed,
                              device=machine_device(args), batch_size=args.batch_size,
                              mode=args.mode, points=args.points, per_class=args.per_class,
                              mix_alpha=args.mix_alpha, covariance=args.covariance,
                              perturb=args.perturb, direction=args.direction,
                              strength=args.strength, sweep=_sweep(args.sweep),
                              normalise=args.normalise, invert=args.invert,
                              processes=args.processes, image_format=args.image_format,
                              quality=args.quality)

    if args.shard or args.plan_only:
        return _generate_shard(args, config())
    with open_project(args) as project:
        job = run_job(project, generate_stage.prepare(
            project, config(), args.model, args.images, args.name,
            image_files=args.image_files, label=args.label, source_class=args.source_class))
        g = project.get(Generation, job.result_id)
    emit(args, {"id": g.id, "name": g.name, "count": g.count},
          f"generation {g.name} ({g.id}): {g.count} images in {g.folder}")
    return 0


def _generate_shard(args: argparse.Namespace, config: GenerateConfig) -> int:
    """--plan-only / --shard K/P: write the plan into --out, then generate one shard."""
    from engine.errors import InvalidConfigError, ProjectLockedError, ProjectNotFoundError
    from engine.project import Project
    from engine.stages import generate_stage, shard_stage

    if not args.out:
        raise InvalidConfigError("--shard and --plan-only need --out DIR")
    out = Path(args.out)
    k, p = shard_stage.parse_shard(args.shard) if args.shard else (0, 1)
    try:
        with Project(project_file(args), create=False, read_only=True) as project:
            params, plan = generate_stage.plan_params(
                project, config, args.model, args.images, args.image_files, args.label,
                args.source_class)
        written = shard_stage.write_plan(out, params, plan.cond)
    except (ProjectNotFoundError, ProjectLockedError) as exc:
        if not (out / shard_stage.PLAN_FILE).is_file():
            raise
        print(f"using the plan in {out} ({exc}); generation options given here are ignored",
              file=sys.stderr)
        written = shard_stage.read_plan(out)[0]
    if args.plan_only:
        emit(args, {"out": str(out), "total": written["total"],
                     "fingerprint": written["fingerprint"]},
              f"plan of {written['total']} images written to {out}")
        return 0
    with interruptible() as (bar, cancel):
        manifest = shard_stage.run_shard(out, k, p, model_dir=args.model_dir, progress=bar,
                                   cancel=cancel)
    emit(args, {**manifest, "folder": str(out / shard_stage.shard_name(k, p))},
          f"shard {k}/{p}: {manifest['count']} of {manifest['total']} images in "
          f"{out / shard_stage.shard_name(k, p)}")
    return 0


def cmd_generate_merge(args: argparse.Namespace) -> int:
    from engine.project import Generation
    from engine.stages.shard_stage import merge_shards

    with open_project(args, create=False) as project:
        gen_id = merge_shards(project, [Path(d) for d in args.dirs], name=args.name)
        g = project.get(Generation, gen_id)
    emit(args, {"id": g.id, "name": g.name, "count": g.count, "folder": g.folder},
          f"generation {g.name} ({g.id}): {g.count} images merged into {g.folder}")
    return 0


def cmd_samplers(args: argparse.Namespace) -> int:
    from engine.rcdm.sample import sampler_names

    names = list(sampler_names())
    if args.json:
        print(json.dumps(names))
    else:
        print("\n".join(names))
    return 0


COMMANDS = {
    "train": cmd_train,
    "import-model": cmd_import_model,
    "generate": cmd_generate,
    "generate-merge": cmd_generate_merge,
    "samplers": cmd_samplers,
}
