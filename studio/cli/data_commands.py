"""Datasets and their representations: import, the demo dataset, encoders, encode."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engine.config import IMPORT_MODES, EncodeConfig, ImportConfig
from studio.cli.console import device_arg, emit, json_arg, open_project, project_arg, run_job


def add_parsers(sub: Any) -> None:
    """Add this group's sub-commands to ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("import", help="import an ImageFolder (one sub-folder per class)")
    project_arg(p)
    p.add_argument("folder", help="folder with one sub-folder of images per class")
    p.add_argument("--name", required=True, help="dataset name in the project")
    p.add_argument("--test-fraction", type=float, default=ImportConfig.test_fraction,
                   help="held-out real test split (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    _split_args(p)
    _store_args(p, IMPORT_MODES)
    json_arg(p)

    p = sub.add_parser("import-demo", help="import the bundled digits dataset")
    project_arg(p)
    p.add_argument("--name", default="digits", help="dataset name (default digits)")
    p.add_argument("--test-fraction", type=float, default=ImportConfig.test_fraction,
                   help="held-out real test split (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    _split_args(p)
    _store_args(p, ("link", "copy"))
    json_arg(p)

    p = sub.add_parser("encoders", help="list the encoders of the registry")
    json_arg(p)

    p = sub.add_parser("encode", help="encode a dataset, or re-encode a generation")
    project_arg(p)
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
    device_arg(p)
    json_arg(p)


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-fraction", type=float, default=ImportConfig.val_fraction,
                   help="validation split carved from the non-test images, as a fraction of "
                        "each class (stratified, seeded; default %(default)s: none)")
    p.add_argument("--train-per-class", type=int, metavar="N", default=None,
                   help="keep N real training images per class (the low-data regime); the "
                        "rest are kept as split 'unused'; the test split does not depend on "
                        "N (default: all)")


def _store_args(p: argparse.ArgumentParser, modes: tuple[str, ...]) -> None:
    p.add_argument("--mode", choices=modes, default=ImportConfig.mode,
                   help="how the images are kept: link (a hard link to each file, a copy "
                        "where the disk refuses one), copy, or reference (left where they "
                        "are: the folder must stay). Files that must be converted (CMYK, "
                        "16-bit, palette, transparency, EXIF rotation, other formats) are "
                        "stored as PNG in every mode (default %(default)s)")
    p.add_argument("--workers", type=int, default=ImportConfig.workers, metavar="N",
                   help="worker processes validating the images (default 0: one per core, "
                        "at most 8)")


def _import_config(args: argparse.Namespace) -> ImportConfig:
    return ImportConfig(test_fraction=args.test_fraction, split_seed=args.seed,
                        val_fraction=args.val_fraction, train_per_class=args.train_per_class,
                        mode=args.mode, workers=args.workers)


def _imported(args: argparse.Namespace, project: Any, job: Any) -> None:
    """Print the dataset an import job made: counts per split, skipped files, warnings."""
    from engine import data
    from engine.project import Dataset

    ds = project.get(Dataset, job.result_id)
    warnings = data.split_warnings(project.images(ds.id), ImportConfig.from_dict(ds.config))
    skipped = ds.skipped
    unused = ds.num_images - ds.num_train - ds.num_val - ds.num_test
    stored = data.stored_counts(project, ds)
    how = ", ".join(f"{n} {k}" for k, n in sorted(stored.items()))
    text = (f"imported {ds.name}: {ds.num_images} images in {ds.num_classes} classes "
            f"({ds.num_train} train / {ds.num_val} val / {ds.num_test} test"
            f"{f' / {unused} unused' if unused else ''}), {len(skipped)} file(s) skipped"
            f"{f'; {how}' if how else ''}")
    for s in skipped[:20]:
        text += f"\n  skipped {s['path']}: {s['reason']}"
    for line in warnings:
        text += f"\n  warning: {line}"
    emit(args, {"id": ds.id, "name": ds.name, "images": ds.num_images,
                 "classes": ds.num_classes, "train": ds.num_train, "val": ds.num_val,
                 "test": ds.num_test, "skipped": skipped, "warnings": warnings,
                 "stored": stored, "job_id": job.id}, text)


def cmd_import(args: argparse.Namespace) -> int:
    from engine.stages import import_stage

    config = _import_config(args)
    with open_project(args) as project:
        job = run_job(project, import_stage.prepare(project, Path(args.folder), args.name,
                                                    config))
        _imported(args, project, job)
    return 0


def cmd_import_demo(args: argparse.Namespace) -> int:
    from engine.stages import import_stage

    config = _import_config(args)
    with open_project(args) as project:
        job = run_job(project, import_stage.prepare(project, None, args.name, config,
                                                    demo=True))
        _imported(args, project, job)
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

    with open_project(args) as project:
        config = EncodeConfig(encoder=args.encoder, dim=args.dim, image_size=args.image_size,
                              device=args.device, model_id=args.model_id,
                              precision=args.precision, batch_size=args.batch_size,
                              chunk_size=args.chunk_size, read_threads=args.read_threads,
                              fit_epochs=args.fit_epochs)
        job = run_job(project, encode_stage.prepare(project, config, dataset_ref=args.dataset,
                                           generation_ref=args.generation))
        from engine.project import Encoding

        enc = project.get(Encoding, job.result_id)
    emit(args, {"id": enc.id, "encoder": enc.encoder, "count": enc.count, "dim": enc.dim},
          f"encoding {enc.id}: {enc.count} x {enc.dim} with {enc.encoder}")
    return 0


COMMANDS = {
    "import": cmd_import,
    "import-demo": cmd_import_demo,
    "encoders": cmd_encoders,
    "encode": cmd_encode,
}
