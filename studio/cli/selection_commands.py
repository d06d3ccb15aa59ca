"""Curated selections: keep a band of the generated images, export an ImageFolder."""

from __future__ import annotations

import argparse
from typing import Any

from engine.config import BandConfig, ExportConfig
from studio.cli.console import emit, json_arg, open_project, project_arg, run_job


def add_parsers(sub: Any) -> None:
    """Add this group's sub-commands to ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("curate", help="keep a band of distances to the class centroid")
    project_arg(p)
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
    json_arg(p)

    p = sub.add_parser("export", help="export a selection as an ImageFolder with a manifest")
    project_arg(p)
    p.add_argument("--selection", required=True, help="selection name or id")
    p.add_argument("--out", help="output folder, anywhere you may write (the studio's page "
                                 "allows only the projects folder); default: a new folder in "
                                 "the project's assets/exports/, named after the selection")
    p.add_argument("--include-real", action="store_true", help="add the real training images")
    p.add_argument("--link", action="store_true", help="hard-link files instead of copying")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="> 0: train/ and val/ folders, seeded and stratified per class")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--size", type=int, default=0, metavar="N",
                   help="write every image at N x N pixels (default 0: the real images' size; "
                        "others are centre-cropped and resized)")
    json_arg(p)


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
    with open_project(args) as project:
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
    emit(args, obj, text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.project import Export
    from engine.stages import export_stage

    config = ExportConfig(include_real=args.include_real, link=args.link,
                          val_fraction=args.val_fraction, split_seed=args.split_seed,
                          size=args.size)
    with open_project(args) as project:
        job = run_job(project, export_stage.prepare(project, config, args.selection, args.out))
        x = project.get(Export, job.result_id)
    size = x.config.get("image_size")
    emit(args, {"id": x.id, "folder": x.folder, "count": x.count, "manifest": x.manifest,
                "size": size},
          f"exported {x.count} images at {size} x {size} pixels to {x.folder}")
    return 0


COMMANDS = {
    "curate": cmd_curate,
    "export": cmd_export,
}
