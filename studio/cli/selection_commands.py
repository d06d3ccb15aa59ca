"""Curated selections: keep a band of the generated images, export an ImageFolder."""

from __future__ import annotations

import argparse
from typing import Any

from engine.config import BandConfig, ExportConfig
from studio.cli.console import emit, json_arg, open_project, project_arg, run_job


def add_parsers(sub: Any) -> None:
    """Add this group's sub-commands to ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("curate", help="keep a band of distances to the class centroid, with "
                                      "samples kept or dropped by hand on top")
    project_arg(p)
    p.add_argument("--generation", required=True, help="generation name or id")
    p.add_argument("--preset", choices=["middle", "nearest", "farthest", "all"],
                   help="band preset; with --fraction, the fraction kept per class")
    p.add_argument("--fraction", type=float, default=None,
                   help="fraction of each class a preset keeps (default 0.5)")
    p.add_argument("--keep", action="append", default=[], metavar="IDS|@FILE",
                   help="keep these samples by hand whatever the band says: sample ids or "
                        "indices, comma-separated, or @FILE with one per line (repeatable; "
                        "stored in the project, so later bands keep them too)")
    p.add_argument("--drop", action="append", default=[], metavar="IDS|@FILE",
                   help="drop these samples by hand whatever the band says (as --keep)")
    p.add_argument("--clear", action="append", default=[], metavar="IDS|@FILE|all",
                   help="forget earlier hand decisions on these samples (all: every one): "
                        "the band decides again")
    p.add_argument("--by", help="who decides, recorded in the samples' provenance "
                                "(default cli:$USER)")
    p.add_argument("--band-only", action="store_true",
                   help="save the band alone, without the hand decisions (they stay stored)")
    p.add_argument("--low", type=float, help="lower quantile of the band (0..1)")
    p.add_argument("--high", type=float, help="upper quantile of the band (0..1)")
    p.add_argument("--centroid", default="real", choices=["real", "generated", "both"],
                   help="class centroids of the real training images, the generated ones, or "
                        "both (default real)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"],
                   help="distance in the representation space (default cosine)")
    p.add_argument("--name", help="selection name")
    p.add_argument("--mode", default="quantile", choices=["quantile", "distance"],
                   help="--low/--high as within-class quantiles or as absolute distances")
    p.add_argument("--class-band", action="append", default=[], metavar="CLASS=LOW:HIGH",
                   help="per-class band override (repeatable), in --mode units")
    p.add_argument("--outlier", default="none", choices=["none", "real", "zscore"],
                   help="drop far outliers: beyond the --outlier-q quantile of the class's "
                        "real images, or a robust z-score above --outlier-z")
    p.add_argument("--outlier-q", type=float, default=0.99,
                   help="--outlier real: the quantile of the class's real distances beyond "
                        "which a sample is an outlier (default 0.99)")
    p.add_argument("--outlier-z", type=float, default=3.5,
                   help="--outlier zscore: the robust z-score above which a sample is an "
                        "outlier (default 3.5)")
    p.add_argument("--target", type=int, default=0, help="keep at most N per class (0: off)")
    p.add_argument("--target-pick", default="centre", choices=["centre", "random"],
                   help="which N a --target keeps: the middle of the band or N at random")
    p.add_argument("--target-seed", type=int, default=0, help="seed of --target-pick random")
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
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the train/val split (default 0)")
    p.add_argument("--size", type=int, default=0, metavar="N",
                   help="write every image at N x N pixels (default 0: the real images' size; "
                        "others are centre-cropped and resized)")
    json_arg(p)


def sample_refs(values: list[str], flag: str) -> list[str]:
    """``--keep`` / ``--drop`` values -> sample ids or indices: comma-separated lists and
    ``@FILE`` (one per line; blank lines and ``#`` comments skipped).

    Raises:
        InvalidConfigError: an ``@FILE`` that cannot be read.
    """
    from pathlib import Path

    from engine.errors import InvalidConfigError

    out: list[str] = []
    for value in values:
        if value.startswith("@"):
            try:
                text = Path(value[1:]).expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidConfigError(f"cannot read {flag} file {value[1:]!r}: "
                                         f"{getattr(exc, 'strerror', None) or exc}") from None
            lines = [line.split("#", 1)[0] for line in text.splitlines()]
        else:
            lines = [value]
        out += [ref.strip() for line in lines for ref in line.split(",") if ref.strip()]
    return out


def _legacy_fraction(args: argparse.Namespace) -> None:
    """``--keep 0.5`` (a decimal: no sample id or index looks like one) was the preset's
    fraction before ``--keep`` meant samples kept by hand: read it as ``--fraction``."""
    import sys

    for value in list(args.keep):
        try:
            fraction = float(value)
        except ValueError:
            continue
        if "." in value and args.fraction is None:
            print(f"note: --keep {value} is read as --fraction {value} (--keep now names "
                  f"samples kept by hand)", file=sys.stderr)
            args.fraction = fraction
            args.keep.remove(value)


def _planned(project, bd, args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``--clear``, ``--keep`` and ``--drop`` (in that order) as (decision, sample idx),
    checked against the generation before anything is written."""
    from engine.errors import InvalidConfigError
    from engine.stages import curate_stage

    gen = bd.generation
    clear = sample_refs(args.clear, "--clear")
    if [c.lower() for c in clear] == ["all"]:
        clear = [str(i) for i in range(len(bd.labels))]
    planned = [(decision, curate_stage.resolve_samples(project, gen, refs))
               for decision, refs in (("clear", clear),
                                      ("keep", sample_refs(args.keep, "--keep")),
                                      ("drop", sample_refs(args.drop, "--drop"))) if refs]
    idx = dict(planned)
    both = set(idx.get("keep", [])) & set(idx.get("drop", []))
    if both:
        raise InvalidConfigError(f"sample {min(both)} is both in --keep and in --drop; "
                                 f"name it in one of them")
    return planned


def _record(project, bd, planned: list[tuple[str, Any]], by: str | None) -> list[Any]:
    """Store the planned hand decisions (who: ``--by``, else cli:$USER)."""
    import getpass

    from engine.stages import curate_stage

    if not by:
        try:
            by = f"cli:{getpass.getuser()}"
        except (KeyError, OSError):  # no user name in this environment
            by = "cli"
    return [curate_stage.record_hand(project, bd.generation.id, idx, decision, by=by,
                                     via="cli") for decision, idx in planned]


def cmd_curate(args: argparse.Namespace) -> int:
    from engine import curation
    from engine.errors import InvalidConfigError
    from engine.paths import check_name
    from engine.stages import curate_stage

    _legacy_fraction(args)

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
        band = BandConfig.preset(args.preset, 0.5 if args.fraction is None
                                 else args.fraction).replace(**extra)
    else:
        band = BandConfig(low=0.0 if args.low is None else args.low,
                          high=1.0 if args.high is None else args.high, **extra)
    metrics = None
    with open_project(args) as project:
        bd = curate_stage.band_data(project, args.generation, args.encoding, centroid=band.centroid,
                              metric=band.metric)
        planned = _planned(project, bd, args)
        mask = curate_stage.band_mask(bd, band)
        if args.name:
            check_name(args.name, "selection name")
        # 1. nothing is written when the selection could not be saved
        future = curation.hand_state(len(mask), planned,
                                     start=curate_stage.hand_state(project, bd.generation.id))
        if not (mask if args.band_only else curation.apply_hand(mask, future)).any():
            raise InvalidConfigError("the band keeps no sample; widen it before saving")
        decisions = _record(project, bd, planned, args.by)
        sel = curate_stage.save_selection(project, bd, band, name=args.name, mask=mask,
                                          hand=not args.band_only)
        table = curate_stage.summary(bd, mask)
        counts = curate_stage.hand_counts(project, bd, mask)
        if args.metrics:
            metrics = curate_stage.metrics(project, bd, sel_mask(project, sel, len(mask)))
    hand = sel.config.get("hand", {})
    obj = {"id": sel.id, "name": sel.name, "count": sel.count,
           "generated": int(len(bd.distances)), "band": band.to_dict(),
           "encoder": bd.encoding.encoder, "hand": hand,
           "recorded": [{"id": d.id, "decision": d.decision, "count": d.count}
                        for d in decisions]}
    text = (table.to_string(index=False) + f"\nselection {sel.name} ({sel.id}): kept "
            f"{sel.count} of {len(bd.distances)}, judged by {bd.encoding.encoder}")
    if hand:
        text += (f"\nkept by band {hand['kept_by_band']}, + kept by hand "
                 f"{hand['kept_by_hand']}, - dropped by hand {hand['dropped_by_hand']}")
    elif (counts["+ kept by hand"].iat[-1] or counts["- dropped by hand"].iat[-1]):
        text += "\n(--band-only: the hand decisions stored in the project were not applied)"
    for d in decisions:
        text += f"\nrecorded: {d.decision} {d.count} sample(s) by hand ({d.id})"
    if metrics is not None:
        obj["metrics"] = metrics["overall"]
        obj["per_class"] = metrics["per_class"].to_dict(orient="records")
        text += "\n\n" + "\n".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                                    for k, v in metrics["overall"].items())
        text += "\n\n" + metrics["per_class"].to_string(index=False, float_format="%.3f")
    emit(args, obj, text)
    return 0


def sel_mask(project, sel, n: int):
    """(n,) bool: the members of a saved selection."""
    import numpy as np

    mask = np.zeros(n, dtype=bool)
    mask[project.selection_members(sel)] = True
    return mask


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
