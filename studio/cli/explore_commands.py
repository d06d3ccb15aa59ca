"""Looking at samples: "more like this" (nearest neighbours), per-sample scores, and the 2-D
map of a generation (``map``: a layout computed once in a job, then reused)."""

from __future__ import annotations

import argparse
from typing import Any

from studio.cli.console import emit, json_arg, open_project, project_arg, run_job


def _records(table: Any) -> list[dict[str, Any]]:
    """Rows as plain JSON values (NaN -> null)."""
    import json

    return json.loads(table.to_json(orient="records"))


def _view_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoding", help="the re-encoding of the generation whose space is "
                                      "searched (a second encoder); default: the latest")
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"],
                   help="distance in the representation space (default cosine: 1 - cos)")
    p.add_argument("--centroid", default="real", choices=["real", "generated", "both"],
                   help="class centroids for the centroid distance (default real)")


def add_parsers(sub: Any) -> None:
    """Add this group's sub-commands to ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("neighbours", help="the k nearest real and generated images of one "
                                          "image in a representation space (more like this)")
    project_arg(p)
    p.add_argument("--image", required=True, metavar="ID",
                   help="a real image id or a sample id (or, with --generation, a sample "
                        "index)")
    p.add_argument("-k", "--k", type=int, default=20, help="neighbours to list (default 20)")
    p.add_argument("--generation", help="generation name or id; default: the sample's own, "
                                        "or the latest re-encoded one of the image's dataset")
    p.add_argument("--among", default="both", choices=["both", "real", "synthetic"],
                   help="search the real training images, the samples, or both (default)")
    p.add_argument("--copies", action="store_true",
                   help="find copies of this training image among the samples: search the "
                        "samples only and flag those closer than --copy-factor x the median "
                        "real-real nearest-neighbour distance")
    p.add_argument("--copy-factor", type=float, default=0.5,
                   help="--copies: the fraction of the median real-real distance under which "
                        "a sample is a copy (default 0.5)")
    p.add_argument("--ids", action="store_true",
                   help="print only the neighbours' ids, one per line (for curate --drop @FILE)")
    _view_args(p)
    json_arg(p)

    p = sub.add_parser("scores", help="per-sample scores of a generation: centroid distance, "
                                      "fidelity, nearest real, uniqueness, classifier "
                                      "confidence")
    project_arg(p)
    p.add_argument("--generation", required=True, help="generation name or id")
    p.add_argument("--sort", metavar="KEY",
                   help="sort by centroid_distance, class_quantile, fidelity, nearest_real, "
                        "uniqueness, confidence (or idx, sample, class); default: sample "
                        "order")
    p.add_argument("--desc", action="store_true", help="sort from the largest value down")
    p.add_argument("--limit", type=int, default=20,
                   help="rows to print (default 20; 0: all)")
    p.add_argument("--out", help="also write every row to this CSV file")
    _view_args(p)
    json_arg(p)

    p = sub.add_parser("map", help="the 2-D map of a generation's real and generated "
                                   "representations (PCA, t-SNE, UMAP): computed once as a "
                                   "job, then reused by the studio's Curate tab")
    project_arg(p)
    p.add_argument("--generation", required=True, help="generation name or id")
    p.add_argument("--method", default="pca", choices=["pca", "tsne", "umap"],
                   help="layout (default pca; tsne takes at most 30,000 points; umap needs "
                        "pip install 'rcdm-studio[map]')")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the subsample and the layout (default 0)")
    p.add_argument("--max-points", type=int, default=None,
                   help="points at most, stratified by kind and class (default 200,000)")
    p.add_argument("--encoding", help="the re-encoding of the generation to lay out "
                                      "(default: the latest)")
    p.add_argument("--force", action="store_true",
                   help="compute the layout again even when one is cached")
    json_arg(p)


def cmd_map(args: argparse.Namespace) -> int:
    from engine.config import MAP_MAX_POINTS, MapConfig
    from engine.project import MapLayout
    from engine.stages import map_stage
    from studio.cli.console import run_job

    config = MapConfig(method=args.method, seed=args.seed,
                       max_points=MAP_MAX_POINTS if args.max_points is None
                       else args.max_points)
    with open_project(args, create=False) as project:
        row = None if args.force else map_stage.find(project, args.generation, config,
                                                     args.encoding)
        cached = row is not None
        if row is None:
            job = run_job(project, map_stage.prepare(project, config, args.generation,
                                                     args.encoding))
            row = project.get(MapLayout, job.result_id)
        obj = {**map_stage.summary(project, row), "cached": cached}
    text = (f"{'cached' if cached else 'computed'} {obj['method']} map {obj['map']} (seed "
            f"{obj['seed']}): {obj['points']:,} points ({obj['real']:,} real, "
            f"{obj['synthetic']:,} synthetic) in {obj['folder']}"
            + (f"; laid out in {obj['seconds']:.1f} s" if obj["seconds"] is not None else ""))
    emit(args, obj, text)
    return 0


def _indexes(project: Any, bd: Any) -> None:
    """Build the view's missing large faiss indexes first, as an ``index`` job with a progress
    bar (Ctrl-C cancels it) rather than silently inside the search (minutes at 500k)."""
    from engine.stages import curate_stage, index_stage

    pending = curate_stage.indexes_pending(project, bd)
    if pending:
        run_job(project, index_stage.prepare(project, bd, pending))


def cmd_neighbours(args: argparse.Namespace) -> int:
    from engine.errors import InvalidConfigError
    from engine.stages import curate_stage

    if args.copies and args.among == "real":
        raise InvalidConfigError("--copies searches the samples; leave out --among real")
    with open_project(args, create=False) as project:
        gen = curate_stage.generation_for(project, args.image, args.generation)
        bd = curate_stage.band_data(project, gen.id, args.encoding, centroid=args.centroid,
                                    metric=args.metric)
        _indexes(project, bd)
        if args.copies:
            table = curate_stage.copies(project, bd, args.image, args.k, args.copy_factor)
        else:
            among = ("real", "synthetic") if args.among == "both" else (args.among,)
            table = curate_stage.neighbours(project, bd, args.image, args.k, among)
    cols = [c for c in ("rank", "kind", "id", "class", "distance", "hand", "copy")
            if c in table.columns]
    obj = {"query": table.attrs["query"], "query_kind": table.attrs["query_kind"],
           "generation": gen.name, "encoding": bd.encoding.id,
           "encoder": bd.encoding.encoder, "metric": bd.metric,
           "neighbours": _records(table[cols + ["idx", "path"]])}
    if "threshold" in table.attrs:
        obj["copy_threshold"] = table.attrs["threshold"]
    if args.ids and not args.json:
        print("\n".join(table["id"].astype(str)))
        return 0
    text = (f"{len(table)} nearest of {table.attrs['query_kind']} image {obj['query']} in "
            f"{bd.encoding.encoder} ({bd.metric}), generation {gen.name}:\n"
            + table[cols].to_string(index=False, float_format="%.4f"))
    if "threshold" in table.attrs:
        text += (f"\n{int(table['copy'].sum())} copies (distance under "
                 f"{table.attrs['threshold']:.4f})")
    emit(args, obj, text)
    return 0


def cmd_scores(args: argparse.Namespace) -> int:
    from engine.errors import InvalidConfigError
    from engine.stages import curate_stage

    if args.limit < 0:
        raise InvalidConfigError(f"--limit must be >= 0, got {args.limit}")
    with open_project(args, create=False) as project:
        bd = curate_stage.band_data(project, args.generation, args.encoding,
                                    centroid=args.centroid, metric=args.metric)
        _indexes(project, bd)
        table = curate_stage.scores(project, bd, sort=args.sort, descending=args.desc)
    if args.out:
        table.to_csv(args.out, index=False)
    shown = table if args.limit == 0 else table.head(args.limit)
    obj = {"generation": bd.generation.name, "encoding": bd.encoding.id,
           "encoder": bd.encoding.encoder, "metric": bd.metric, "count": int(len(table)),
           "sort": args.sort, "notes": table.attrs["notes"],
           "rows": _records(shown)}
    cols = ["idx", "sample", "class", *curate_stage.SCORE_KEYS, "predicted", "hand"]
    text = (shown[cols].to_string(index=False, float_format="%.4f")
            + f"\n{len(shown)} of {len(table)} samples"
            + (f", sorted by {args.sort}{' (descending)' if args.desc else ''}"
               if args.sort else "")
            + (f"; all rows in {args.out}" if args.out else "")
            + "".join(f"\nnote: {n}" for n in table.attrs["notes"]))
    emit(args, obj, text)
    return 0


COMMANDS = {
    "map": cmd_map,
    "neighbours": cmd_neighbours,
    "scores": cmd_scores,
}
