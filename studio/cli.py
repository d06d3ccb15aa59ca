"""The ``rcdm-studio`` console script: the studio, and one subcommand per stage.

``rcdm-studio`` alone launches the studio; every action the studio can do, a subcommand can
do too. Errors the engine raises on purpose are printed as one sentence with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from engine.config import BandConfig, EncodeConfig, EvalConfig, ExportConfig, GenerateConfig, \
    ImportConfig, TrainConfig
from engine.errors import StudioError
from engine.progress import CancelToken, console_progress

log = logging.getLogger("rcdm_studio")

DEFAULT_PROJECT = "rcdm-studio.duckdb"


def _project_arg(p: argparse.ArgumentParser, top: bool = False) -> None:
    # Sub-commands do not repeat the default, so `rcdm-studio --project X demo` keeps X.
    default = os.environ.get("RCDM_STUDIO_PROJECT", DEFAULT_PROJECT) if top else argparse.SUPPRESS
    p.add_argument("--project", default=default,
                   help="project file NAME.duckdb (its assets go to NAME.assets/); default "
                        f"$RCDM_STUDIO_PROJECT or ./{DEFAULT_PROJECT}")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object on the last line")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")


def _set_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help=f"any other {what} option, e.g. meada_adv_lr=0.25 (a JSON value or a "
                        f"string; repeatable; applied last)")


def _with_sets(config: Any, sets: list[str]) -> Any:
    """``config`` with the ``--set KEY=VALUE`` overrides (``engine.config.with_overrides``)."""
    from engine.config import with_overrides

    return with_overrides(config, sets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcdm-studio",
        description="RCDM Studio: train representation-conditioned diffusion models on your "
                    "images, generate variations, curate them in the representation space, "
                    "measure their training value and export an ImageFolder. Without a "
                    "subcommand it launches the studio in the browser.")
    _project_arg(parser, top=True)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default 7860)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--auth", default=os.environ.get("RCDM_STUDIO_AUTH") or None,
                        metavar="USER:PASSWORD",
                        help="ask for this login (several: comma-separated); default "
                             "$RCDM_STUDIO_AUTH. Use it whenever --host is not 127.0.0.1")
    parser.add_argument("--max-upload", default=os.environ.get("RCDM_STUDIO_MAX_UPLOAD",
                                                               "512mb"),
                        help="largest file the studio accepts as an upload (default 512mb)")
    parser.add_argument("--demo", action="store_true",
                        help="import the bundled digits dataset when the project has no dataset")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline on the bundled digits dataset",
                       description="Import the digits, encode, train an RCDM and the "
                                   "class-conditioned baseline, generate, re-encode, keep the "
                                   "middle band, evaluate four training mixes, export.")
    _project_arg(p)
    p.add_argument("--quick", action="store_true", help="smaller run (a few minutes on a CPU)")
    p.add_argument("--export", metavar="DIR", help="export folder (default: in the assets)")
    p.add_argument("--encoder", default="pca", choices=["pca", "simclr"],
                   help="offline image encoder to condition on (pca or simclr; the class "
                        "baseline is always trained beside it)")
    _json_arg(p)

    p = sub.add_parser("import", help="import an ImageFolder (one sub-folder per class)")
    _project_arg(p)
    p.add_argument("folder", help="folder with one sub-folder of images per class")
    p.add_argument("--name", required=True, help="dataset name in the project")
    p.add_argument("--test-fraction", type=float, default=ImportConfig.test_fraction,
                   help="held-out real test split (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    _json_arg(p)

    p = sub.add_parser("import-demo", help="import the bundled digits dataset")
    _project_arg(p)
    p.add_argument("--name", default="digits", help="dataset name (default digits)")
    _json_arg(p)

    p = sub.add_parser("status", help="show what the project holds")
    _project_arg(p)
    _json_arg(p)

    p = sub.add_parser("encode", help="encode a dataset, or re-encode a generation")
    _project_arg(p)
    p.add_argument("--dataset", help="dataset name or id (default: the only one)")
    p.add_argument("--generation", help="re-encode this generation instead of a dataset")
    p.add_argument("--encoder", default="pca", help="encoder name (see `encoders`)")
    p.add_argument("--dim", type=int, default=EncodeConfig.dim,
                   help="dimension (pca, simclr)")
    p.add_argument("--image-size", type=int, default=EncodeConfig.image_size,
                   help="resolution offline encoders look at")
    p.add_argument("--model-id", default=None,
                   help="pretrained encoders: hub id, local folder, or variant (dinov2: s/b/l/g; "
                        "dinov3: s/b/l; clip: NAME[:TAG|:FILE]); default: the paper's model")
    p.add_argument("--precision", default=EncodeConfig.precision,
                   choices=["fp32", "fp16", "bf16"], help="autocast on CUDA (fp32 on the CPU)")
    p.add_argument("--batch-size", type=int, default=EncodeConfig.batch_size,
                   help="images per forward pass")
    p.add_argument("--chunk-size", type=int, default=EncodeConfig.chunk_size,
                   help="images per resumable chunk")
    p.add_argument("--read-threads", type=int, default=EncodeConfig.read_threads,
                   help="threads decoding image files (pretrained encoders)")
    p.add_argument("--fit-epochs", type=int, default=EncodeConfig.fit_epochs,
                   help="training epochs of the simclr encoder")
    _device_arg(p)
    _json_arg(p)

    p = sub.add_parser("encoders", help="list the encoders of the registry")
    _json_arg(p)

    p = sub.add_parser("train", help="train an RCDM conditioned on an encoding")
    _project_arg(p)
    p.add_argument("--dataset", help="dataset name or id")
    p.add_argument("--encoder", default="pca",
                   help="condition on the dataset's encoding with this encoder "
                        "(class = the class-conditioned baseline)")
    p.add_argument("--name", help="model name")
    p.add_argument("--preset", default="tiny-cpu", choices=["tiny-cpu", "imagenet256"],
                   help="starting TrainConfig (imagenet256: the paper's 256 px latent RCDM, "
                        "125 epochs of the dataset at batch 16); the options below override it")
    p.add_argument("--steps", type=int, help=f"optimiser steps (tiny-cpu: {TrainConfig.steps})")
    p.add_argument("--batch-size", type=int,
                   help=f"images per optimiser step (tiny-cpu: {TrainConfig.batch_size})")
    p.add_argument("--lr", type=float, help=f"learning rate (tiny-cpu: {TrainConfig.learning_rate})")
    p.add_argument("--image-size", type=int,
                   help=f"training image size in pixels (tiny-cpu: {TrainConfig.image_size})")
    p.add_argument("--cond-dropout", type=float,
                   help="probability of dropping the representation (classifier-free guidance)")
    p.add_argument("--space", choices=["pixel", "latent"],
                   help="denoise pixels (toy sizes) or the latents of a VAE")
    p.add_argument("--vae", help="AutoencoderKL hub id or local folder for --space latent "
                                 f"(default {TrainConfig.vae_id})")
    p.add_argument("--min-snr-gamma", type=float, help="min-SNR-gamma loss weighting, e.g. 5")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision (fp16 needs CUDA)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step")
    p.add_argument("--processes", type=int,
                   help="data-parallel processes (one per GPU; gloo processes on the CPU): "
                        "the job runs torchrun and holds that many job slots (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, ... (default: cpu; "
                                    "imagenet256: cuda)")
    _json_arg(p)

    p = sub.add_parser(
        "generate", help="generate images: variations, interpolations, mix-ups, class samples",
        description="Generate images with a trained RCDM. --mode picks the representations: "
                    "variations of real images (the paper's), interpolate between two images "
                    "(--images A B), mixup within a class, class_sample (new representations "
                    "drawn from each class's Gaussian). With --shard K/P --out DIR it "
                    "generates shard K (0..P-1) of the generation into DIR without writing "
                    "to the project; `generate-merge` ingests the shards.")
    _project_arg(p)
    p.add_argument("--model", help="model name or id (default: the latest trained)")
    p.add_argument("--variations", type=int, default=1,
                   help="seeds per representation (per source image in variations mode)")
    p.add_argument("--images", nargs="*",
                   help="source image ids (default: the training split); two for interpolate")
    p.add_argument("--mode", default=GenerateConfig.mode,
                   choices=["variations", "interpolate", "mixup", "class_sample"])
    p.add_argument("--points", type=int, default=GenerateConfig.points,
                   help="interpolate: representations on the path, ends included")
    p.add_argument("--per-class", type=int, default=GenerateConfig.per_class,
                   help="mixup / class_sample: new representations per class")
    p.add_argument("--mix-alpha", type=float, default=GenerateConfig.mix_alpha,
                   help="mixup: weights ~ Beta(a, a) (1 = uniform)")
    p.add_argument("--covariance", default=GenerateConfig.covariance,
                   choices=["ledoit_wolf", "diagonal"], help="class_sample: covariance")
    p.add_argument("--sampler", default=GenerateConfig.sampler,
                   help="ddpm (default, 100 steps: the paper's), ddim, dpm++ or a diffusers "
                        "scheduler class name, e.g. EulerDiscreteScheduler (see `samplers`)")
    p.add_argument("--steps", type=int, default=GenerateConfig.steps)
    p.add_argument("--guidance", type=float, default=GenerateConfig.guidance,
                   help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--batch-size", type=int, default=GenerateConfig.batch_size)
    p.add_argument("--name", help="generation name")
    p.add_argument("--shard", metavar="K/P",
                   help="generate only shard K of P (0 <= K < P) into --out; the project is "
                        "only read (or not opened at all when --out already holds the plan)")
    p.add_argument("--out", metavar="DIR", help="shard output folder (with --shard)")
    p.add_argument("--plan-only", action="store_true",
                   help="write the generation's plan into --out and stop (for workers that "
                        "cannot read the project)")
    p.add_argument("--model-dir", help="with --shard: the model folder on this machine")
    _device_arg(p)
    _json_arg(p)

    p = sub.add_parser("generate-merge", help="ingest sharded generation outputs",
                       description="Check that the shard folders hold every shard 0..P-1 of "
                                   "one generation, complete and from the same model and "
                                   "options, and ingest them as one generation.")
    _project_arg(p)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="shard output folders")
    p.add_argument("--name", help="generation name")
    _json_arg(p)

    p = sub.add_parser("samplers", help="list the sampler names --sampler accepts")
    _json_arg(p)

    p = sub.add_parser("curate", help="keep a band of distances to the class centroid")
    _project_arg(p)
    p.add_argument("--generation", required=True, help="generation name or id")
    p.add_argument("--preset", choices=["middle", "nearest", "farthest", "all"],
                   help="band preset; with --keep, the fraction kept per class")
    p.add_argument("--keep", type=float, default=0.5, help="fraction kept by a preset")
    p.add_argument("--low", type=float, help="lower quantile of the band (0..1)")
    p.add_argument("--high", type=float, help="upper quantile of the band (0..1)")
    p.add_argument("--centroid", default="real", choices=["real", "generated", "both"])
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    p.add_argument("--name", help="selection name")
    p.add_argument("--mode", default="quantile", choices=["quantile", "distance"],
                   help="--low/--high as within-class quantiles or as absolute distances")
    p.add_argument("--class-band", action="append", default=[], metavar="CLASS=LOW:HIGH",
                   help="per-class band override (repeatable), in --mode units")
    p.add_argument("--outlier", default="none", choices=["none", "real", "zscore"],
                   help="drop far outliers: beyond the --outlier-q quantile of the class's "
                        "real images, or a robust z-score above --outlier-z")
    p.add_argument("--outlier-q", type=float, default=0.99)
    p.add_argument("--outlier-z", type=float, default=3.5)
    p.add_argument("--target", type=int, default=0, help="keep at most N per class (0: off)")
    p.add_argument("--target-pick", default="centre", choices=["centre", "random"])
    p.add_argument("--target-seed", type=int, default=0)
    p.add_argument("--encoding", help="judge by this re-encoding of the generation (a second "
                                      "encoder); default: the latest")
    p.add_argument("--metrics", action="store_true",
                   help="also compute precision/recall/density/coverage, Frechet, copies")
    _json_arg(p)

    p = sub.add_parser("evaluate", help="train a classifier on a training mix (real test split)")
    _project_arg(p)
    p.add_argument("--mix", default="real", choices=["real", "synthetic", "real+synthetic"])
    p.add_argument("--selection", help="synthetic part: a selection")
    p.add_argument("--generation", help="synthetic part: a whole generation")
    p.add_argument("--dataset", help="dataset name or id")
    p.add_argument("--arch", default=EvalConfig.arch, choices=["resnet_tiny", "resnet18",
                                                               "resnet50"])
    p.add_argument("--epochs", type=int, default=EvalConfig.epochs)
    p.add_argument("--augment", default=EvalConfig.augment,
                   choices=["none", "crop", "autoaugment", "randaugment", "mixup", "cutmix",
                            "meada"],
                   help="augmentation (every one but none includes the crop; default crop)")
    p.add_argument("--schedule", default=EvalConfig.schedule, choices=["cosine", "step"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--processes", type=int, default=EvalConfig.processes,
                   help="data-parallel processes under torchrun (one per GPU; default 1)")
    p.add_argument("--name", help="evaluation name")
    _set_arg(p, "EvalConfig")
    _device_arg(p)
    _json_arg(p)

    p = sub.add_parser("export", help="export a selection as an ImageFolder with a manifest")
    _project_arg(p)
    p.add_argument("--selection", required=True, help="selection name or id")
    p.add_argument("--out", help="output folder (default: in the project's assets)")
    p.add_argument("--include-real", action="store_true", help="add the real training images")
    p.add_argument("--link", action="store_true", help="hard-link files instead of copying")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="> 0: train/ and val/ folders, seeded and stratified per class")
    p.add_argument("--split-seed", type=int, default=0)
    _json_arg(p)

    p = sub.add_parser("jobs", help="list, cancel or retry background jobs")
    _project_arg(p)
    p.add_argument("action", nargs="?", default="list", choices=["list", "cancel", "retry"])
    p.add_argument("job", nargs="?", help="job id (cancel, retry)")
    _json_arg(p)

    p = sub.add_parser(
        "experiment", help="the paper's experiments: scaling, augmentation, filtering",
        description="scaling: synthetic-only at 1x..4x per generation, with real only as a "
                    "line; augmentation: real, real + AutoAugment / RandAugment / Mixup / "
                    "CutMix, real + 1x and 2x synthetic; filtering: unfiltered 1x vs the "
                    "middle band of 2x. Each configuration runs --seeds times; the jobs are "
                    "queued in the project (a studio open on it runs them) or run now with "
                    "--wait. `list` shows the experiments, `show ID` one table.")
    _project_arg(p)
    p.add_argument("action", choices=["scaling", "augmentation", "filtering", "list", "show"])
    p.add_argument("ref", nargs="?", help="experiment id or name (show)")
    p.add_argument("--generation", action="append", default=[],
                   help="generation name or id with enough variations per image (repeat "
                        "for one line per model in scaling)")
    p.add_argument("--seeds", type=int, default=3, help="runs per configuration (default 3)")
    p.add_argument("--arch", default=EvalConfig.arch,
                   choices=["resnet_tiny", "resnet18", "resnet50"])
    p.add_argument("--epochs", type=int, default=EvalConfig.epochs)
    p.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    p.add_argument("--augment", default=EvalConfig.augment,
                   help="the base augmentation of every configuration (default crop)")
    p.add_argument("--schedule", default=EvalConfig.schedule, choices=["cosine", "step"])
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 4],
                   help="scaling: synthetic sizes in variations per image (default 1 2 3 4)")
    p.add_argument("--keep", type=float, default=0.5,
                   help="filtering: fraction of the 2x the middle band keeps (default 0.5)")
    p.add_argument("--augmentations", nargs="+",
                   choices=["autoaugment", "randaugment", "mixup", "cutmix", "meada"],
                   help="augmentation: the classical baselines to run (default autoaugment "
                        "randaugment mixup cutmix; meada, the slowest, on request)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--name", help="experiment name")
    p.add_argument("--wait", action="store_true",
                   help="run the queued jobs now in worker processes and wait for them")
    p.add_argument("--max-running", type=int,
                   help="workers at once with --wait (default: one per GPU, one on a CPU)")
    p.add_argument("--csv", metavar="FILE", help="show: write the table as CSV")
    p.add_argument("--markdown", metavar="FILE", help="show: write the table as Markdown")
    _set_arg(p, "EvalConfig (every configuration)")
    _device_arg(p)
    _json_arg(p)

    p = sub.add_parser("check", help="check the project's rows, files, jobs and leftovers",
                       description="Report missing or broken files, rows pointing at missing "
                                   "rows, stale jobs, temp files and orphan folders. Exit code "
                                   "0 when nothing is left to fix, 1 otherwise.")
    _project_arg(p)
    p.add_argument("--repair", action="store_true",
                   help="reconcile stale jobs and delete temp files (never rows nor user data)")
    _json_arg(p)
    return parser


# --------------------------------------------------------------------------- commands


def _open(args: argparse.Namespace, create: bool = True):
    from engine.project import Project

    return Project(args.project, create=create)


def _run(project, spec, args) -> Any:
    from engine.jobs import JobManager

    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    bar = console_progress()
    try:
        print(f"-> {spec.title}", file=sys.stderr)
        return JobManager(project).run_inline(spec, progress=bar, cancel=cancel)
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(text)


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import DemoConfig, results_table, run_demo

    config = (DemoConfig.quick() if args.quick else DemoConfig()).with_encoder(args.encoder)
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    bar = console_progress()
    try:
        with _open(args) as project:
            results = run_demo(project, config, Path(args.export) if args.export else None,
                               progress=bar, cancel=cancel,
                               say=lambda m: print(m, file=sys.stderr))
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
    print(results_table(results))
    if args.json:
        print(json.dumps(results))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from engine import data

    config = ImportConfig(test_fraction=args.test_fraction, split_seed=args.seed)
    with _open(args) as project:
        bar = console_progress()
        ds = data.import_image_folder(project, Path(args.folder), args.name, config,
                                      progress=bar)
        bar.close()
        skipped = json.loads(ds.skipped_json)
    text = (f"imported {ds.name}: {ds.num_images} images in {ds.num_classes} classes "
            f"({ds.num_train} train / {ds.num_test} test), {len(skipped)} file(s) skipped")
    for s in skipped[:20]:
        text += f"\n  skipped {s['path']}: {s['reason']}"
    _emit(args, {"id": ds.id, "name": ds.name, "images": ds.num_images,
                 "classes": ds.num_classes, "train": ds.num_train, "test": ds.num_test,
                 "skipped": skipped}, text)
    return 0


def cmd_import_demo(args: argparse.Namespace) -> int:
    from engine import data

    with _open(args) as project:
        ds = data.import_demo(project, name=args.name)
    _emit(args, {"id": ds.id, "name": ds.name, "images": ds.num_images},
          f"imported {ds.name}: {ds.num_images} images in {ds.num_classes} classes")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from engine.project import Project

    with Project(args.project, create=False) as project:
        s = project.summary()
    if args.json:
        print(json.dumps(s, default=str))
        return 0
    print(f"project {s['project']} (schema {s['schema_version']})")
    for d in s["datasets"]:
        print(f"  dataset   {d['name']:<24} {d['num_images']} images, {d['num_classes']} "
              f"classes, {d['num_train']} train / {d['num_test']} test")
    for e in s["encodings"]:
        print(f"  encoding  {e['id']:<24} {e['encoder']} {e['target']} {e['target_id']} "
              f"({e['count']} x {e['dim']}{', offline' if e['offline'] else ''})")
    for m in s["models"]:
        loss = f", loss {m['final_loss']:.4f}" if m["final_loss"] is not None else ""
        print(f"  model     {m['name']:<24} {m['encoder']}, {m['status']}, "
              f"{m['steps_done']} steps{loss}")
    for g in s["generations"]:
        print(f"  generation {g['name']:<23} {g['count']} images")
    for sel in s["selections"]:
        print(f"  selection {sel['name']:<24} {sel['count']} samples")
    for e in s["evaluations"]:
        acc = f"top-1 {e['top1']:.2f}, top-5 {e['top5']:.2f}" if e["top1"] is not None else ""
        print(f"  evaluation {e['name']:<23} {e['mix']}, {e['status']} {acc}")
    for x in s["exports"]:
        print(f"  export    {x['folder']} ({x['count']} images)")
    active = [j for j in s["jobs"] if j["status"] not in ("done",)]
    print(f"  jobs      {len(s['jobs'])} in all, {len(active)} not done")
    for j in active:
        print(f"    {j['id']} {j['kind']:<9} {j['status']:<11} {j['title']} {j['error']}")
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    from engine.encoders import available_encoders

    rows = available_encoders()
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['name']:<8} {'offline' if r['offline'] else 'pretrained':<10} "
                  f"{r['description']}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from engine.stages import encode_stage

    config = EncodeConfig(encoder=args.encoder, dim=args.dim, image_size=args.image_size,
                          device=args.device, model_id=args.model_id, precision=args.precision,
                          batch_size=args.batch_size, chunk_size=args.chunk_size,
                          read_threads=args.read_threads, fit_epochs=args.fit_epochs)
    with _open(args) as project:
        job = _run(project, encode_stage.prepare(project, config, dataset_ref=args.dataset,
                                           generation_ref=args.generation), args)
        from engine.project import Encoding

        enc = project.get(Encoding, job.result_id)
    _emit(args, {"id": enc.id, "encoder": enc.encoder, "count": enc.count, "dim": enc.dim},
          f"encoding {enc.id}: {enc.count} x {enc.dim} with {enc.encoder}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from engine.project import Model
    from engine.stages import train_stage

    from engine.rcdm.presets import preset_config
    from engine.stages import common

    given = {"steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
             "image_size": args.image_size, "cond_dropout": args.cond_dropout,
             "space": args.space, "vae_id": args.vae, "min_snr_gamma": args.min_snr_gamma,
             "precision": args.precision, "grad_accum": args.grad_accum, "device": args.device,
             "processes": args.processes}
    overrides = {k: v for k, v in given.items() if v is not None}
    with _open(args) as project:
        num_train = common.dataset(project, args.dataset).num_train
        config = preset_config(args.preset, num_images=num_train, seed=args.seed, **overrides)
        job = _run(project, train_stage.prepare(project, config, args.dataset, encoder=args.encoder,
                                          name=args.name), args)
        m = project.get(Model, job.result_id)
    _emit(args, {"id": m.id, "name": m.name, "steps": m.steps_done, "final_loss": m.final_loss},
          f"model {m.name} ({m.id}): {m.steps_done} steps, final loss {m.final_loss:.4f}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.project import Generation
    from engine.stages import generate_stage

    config = GenerateConfig(variations=args.variations, sampler=args.sampler, steps=args.steps,
                            guidance=args.guidance, seed=args.seed, device=args.device,
                            batch_size=args.batch_size, mode=args.mode, points=args.points,
                            per_class=args.per_class, mix_alpha=args.mix_alpha,
                            covariance=args.covariance)
    if args.shard or args.plan_only:
        return _generate_shard(args, config)
    with _open(args) as project:
        job = _run(project, generate_stage.prepare(project, config, args.model, args.images,
                                             args.name), args)
        g = project.get(Generation, job.result_id)
    _emit(args, {"id": g.id, "name": g.name, "count": g.count},
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
        with Project(args.project, create=False, read_only=True) as project:
            params, plan = generate_stage.plan_params(project, config, args.model, args.images)
        written = shard_stage.write_plan(out, params, plan.cond)
    except (ProjectNotFoundError, ProjectLockedError) as exc:
        if not (out / shard_stage.PLAN_FILE).is_file():
            raise
        print(f"using the plan in {out} ({exc}); generation options given here are ignored",
              file=sys.stderr)
        written = shard_stage.read_plan(out)[0]
    if args.plan_only:
        _emit(args, {"out": str(out), "total": written["total"],
                     "fingerprint": written["fingerprint"]},
              f"plan of {written['total']} images written to {out}")
        return 0
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    bar = console_progress()
    try:
        manifest = shard_stage.run_shard(out, k, p, model_dir=args.model_dir, progress=bar,
                                         cancel=cancel)
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
    _emit(args, {**manifest, "folder": str(out / shard_stage.shard_name(k, p))},
          f"shard {k}/{p}: {manifest['count']} of {manifest['total']} images in "
          f"{out / shard_stage.shard_name(k, p)}")
    return 0


def cmd_generate_merge(args: argparse.Namespace) -> int:
    from engine.project import Generation
    from engine.stages.shard_stage import merge_shards

    with _open(args, create=False) as project:
        gen_id = merge_shards(project, [Path(d) for d in args.dirs], name=args.name)
        g = project.get(Generation, gen_id)
    _emit(args, {"id": g.id, "name": g.name, "count": g.count, "folder": g.folder},
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


def cmd_curate(args: argparse.Namespace) -> int:
    from engine.errors import InvalidConfigError
    from engine.stages import curate_stage

    per_class = []
    for item in args.class_band:
        name, _, rng = item.rpartition("=")
        lo, _, hi = rng.partition(":")
        try:
            per_class.append((name, float(lo), float(hi)))
        except ValueError:
            raise InvalidConfigError(
                f"--class-band must be CLASS=LOW:HIGH, got {item!r}") from None
    extra = dict(mode=args.mode, per_class=tuple(per_class), outlier=args.outlier,
                 outlier_q=args.outlier_q, outlier_z=args.outlier_z,
                 target_per_class=args.target, target_pick=args.target_pick,
                 target_seed=args.target_seed, centroid=args.centroid, metric=args.metric)
    if args.preset:
        band = BandConfig.preset(args.preset, args.keep).replace(**extra)
    else:
        band = BandConfig(low=0.0 if args.low is None else args.low,
                          high=1.0 if args.high is None else args.high, **extra)
    metrics = None
    with _open(args) as project:
        bd = curate_stage.band_data(project, args.generation, args.encoding, centroid=band.centroid,
                              metric=band.metric)
        mask = curate_stage.band_mask(bd, band)
        sel = curate_stage.save_selection(project, bd, band, name=args.name, mask=mask)
        table = curate_stage.summary(bd, mask)
        if args.metrics:
            metrics = curate_stage.metrics(project, bd, mask)
    obj = {"id": sel.id, "name": sel.name, "count": sel.count,
           "generated": int(len(bd.distances)), "band": band.to_dict(),
           "encoder": bd.encoding.encoder}
    text = (table.to_string(index=False) + f"\nselection {sel.name} ({sel.id}): kept "
            f"{sel.count} of {len(bd.distances)}, judged by {bd.encoding.encoder}")
    if metrics is not None:
        obj["metrics"] = metrics["overall"]
        obj["per_class"] = metrics["per_class"].to_dict(orient="records")
        text += "\n\n" + "\n".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                                    for k, v in metrics["overall"].items())
        text += "\n\n" + metrics["per_class"].to_string(index=False, float_format="%.3f")
    _emit(args, obj, text)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.project import Evaluation
    from engine.stages import evaluate_stage

    config = _with_sets(EvalConfig(arch=args.arch, epochs=args.epochs, seed=args.seed,
                                   device=args.device, augment=args.augment,
                                   schedule=args.schedule, processes=args.processes), args.sets)
    with _open(args) as project:
        job = _run(project, evaluate_stage.prepare(project, config, mix=args.mix,
                                             dataset_ref=args.dataset,
                                             selection_ref=args.selection,
                                             generation_ref=args.generation, name=args.name),
                   args)
        e = project.get(Evaluation, job.result_id)
    _emit(args, {"id": e.id, "name": e.name, "mix": e.mix, "top1": e.top1, "top5": e.top5,
                 "train_images": e.num_train, "test_images": e.num_test},
          f"evaluation {e.name}: {e.mix} ({e.num_train} images), top-1 {e.top1:.2f} %, "
          f"top-5 {e.top5:.2f} % on {e.num_test} real test images")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.project import Export
    from engine.stages import export_stage

    config = ExportConfig(include_real=args.include_real, link=args.link,
                          val_fraction=args.val_fraction, split_seed=args.split_seed)
    with _open(args) as project:
        job = _run(project, export_stage.prepare(project, config, args.selection, args.out), args)
        x = project.get(Export, job.result_id)
    _emit(args, {"id": x.id, "folder": x.folder, "count": x.count, "manifest": x.manifest},
          f"exported {x.count} images to {x.folder}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from engine.jobs import JobManager
    from engine.project import Job

    if args.action in ("cancel", "retry") and not args.job:
        raise StudioError(f"jobs {args.action} needs a job id; `rcdm-studio jobs list` "
                          f"shows them")
    with _open(args, create=False) as project:
        jobs = JobManager(project)
        if args.action == "cancel":
            jobs.cancel(args.job)
        elif args.action == "retry":
            jobs.retry(args.job)
            print("queued again; it runs while a studio is open on the project, or now:",
                  file=sys.stderr)
            job = jobs.wait(args.job)
            print(f"{job.id}: {job.status} {job.error}")
            return 0 if job.status == "done" else 1
        jobs.reconcile()
        rows = [j.model_dump(mode="json") for j in project.list(Job)]
    if args.json:
        print(json.dumps(rows))
    else:
        for j in rows:
            print(f"{j['id']} {j['kind']:<9} {j['status']:<11} {j['title']} {j['error']}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from engine.check import check_project

    with _open(args, create=False) as project:
        report = check_project(project, repair=args.repair)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        for p in report.problems:
            where = p.get("row") or p.get("path") or ""
            mark = "repaired" if p["repaired"] else "problem"
            print(f"{mark:<8} {p['kind']:<18} {where}: {p['message']}")
        left = sum(not p["repaired"] for p in report.problems)
        hint = "; run with --repair to fix what can be fixed" if left and not args.repair else ""
        print(f"{report.project}: {len(report.problems)} problem(s), "
              f"{len(report.problems) - left} repaired, {left} left{hint}")
    return 0 if report.ok else 1


def cmd_launch(args: argparse.Namespace) -> int:
    from studio.app import launch

    launch(project_path=args.project, host=args.host, port=args.port,
           open_browser=not args.no_browser, demo=args.demo, auth=args.auth,
           max_file_size=args.max_upload)
    return 0


def _wait_experiment(project, record: dict[str, Any], max_running: int | None) -> None:
    """Run the experiment's queued jobs in workers and wait; Ctrl-C cancels them."""
    import time

    from engine import experiments
    from engine.jobs import ACTIVE, JobManager
    from engine.project import Evaluation, Job

    jobs = JobManager(project, max_running=max_running)
    jobs.reconcile()
    ids = [project.get(Evaluation, m["evaluation_id"]).job_id for m in record["members"]]
    last = None
    try:
        while True:
            rows = {j.id: j for j in jobs.poll()}
            st = experiments.status(project, record)
            line = (st["done"], sum(rows[i].status == "running" for i in ids if i in rows))
            if line != last:
                print(f"{record['name']}: {st['done']}/{st['total']} evaluations done, "
                      f"{line[1]} running", file=sys.stderr)
                last = line
            if not any(i in rows and rows[i].status in ACTIVE for i in ids):
                return
            time.sleep(1.0)
    except KeyboardInterrupt:
        for i in ids:
            if project.get(Job, i).status in ("queued", "running"):
                jobs.cancel(i)
        raise


def cmd_experiment(args: argparse.Namespace) -> int:
    from engine import experiments
    from engine.jobs import JobManager

    with _open(args, create=args.action not in ("list", "show")) as project:
        if args.action == "list":
            table = experiments.summary_table(project)
            _emit(args, {"experiments": table.to_dict(orient="records")},
                  table.to_string(index=False) if len(table) else "no experiment yet")
            return 0
        if args.action == "show":
            if not args.ref:
                raise StudioError("experiment show needs an experiment id or name; "
                                  "`rcdm-studio experiment list` shows them")
            record = experiments.get(project, args.ref)
        else:
            config = _with_sets(EvalConfig(
                arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
                augment=args.augment, schedule=args.schedule, seed=args.seed,
                device=args.device), args.sets)
            jobs = JobManager(project, max_running=args.max_running)
            record = experiments.launch(
                project, args.action, args.generation, config, submit=jobs.create,
                seeds=args.seeds, name=args.name, **({"sizes": tuple(args.sizes)}
                                                     if args.action == "scaling" else {}),
                **({"keep_fraction": args.keep} if args.action == "filtering" else {}),
                **({"augmentations": tuple(args.augmentations)}
                   if args.action == "augmentation" and args.augmentations else {}))
            print(f"experiment {record['name']} ({record['id']}): {len(record['members'])} "
                  f"evaluations queued", file=sys.stderr)
        if args.wait:
            _wait_experiment(project, record, args.max_running)
        written = experiments.export(project, record,
                                     csv=Path(args.csv) if args.csv else None,
                                     md=Path(args.markdown) if args.markdown else None)
        st = experiments.status(project, record)
        table = experiments.table(project, record)
        text = experiments.markdown(project, record)
    if st["status"] in ("queued", "running") and not args.wait:
        text += (f"\n{st['done']}/{st['total']} done; the jobs run while a studio is open on "
                 f"the project, or now with `rcdm-studio experiment show {record['id']} "
                 f"--wait`")
    _emit(args, {"id": record["id"], "name": record["name"], "kind": record["kind"], **st,
                 "table": json.loads(table.to_json(orient="records")), **written}, text)
    return 0 if st["status"] != "incomplete" else 1


COMMANDS = {
    "experiment": cmd_experiment,
    "demo": cmd_demo, "import": cmd_import, "import-demo": cmd_import_demo,
    "status": cmd_status, "encoders": cmd_encoders, "encode": cmd_encode, "train": cmd_train,
    "generate": cmd_generate, "curate": cmd_curate, "evaluate": cmd_evaluate,
    "export": cmd_export, "jobs": cmd_jobs, "check": cmd_check,
    "generate-merge": cmd_generate_merge, "samplers": cmd_samplers,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS.get(args.command, cmd_launch)(args)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
