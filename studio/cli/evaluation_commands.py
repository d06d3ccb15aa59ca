"""Training value: evaluate one mix, the paper's experiments, the whole demo."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.config import EvalConfig, GenerateConfig
from engine.errors import InvalidConfigError, StudioError
from studio.cli.console import (
    device_arg,
    emit,
    interruptible,
    json_arg,
    open_project,
    project_arg,
    run_job,
    set_arg,
    with_sets,
)


def add_parsers(sub: Any) -> None:
    """Add this group's sub-commands to ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("evaluate", help="train a classifier on a training mix, score it on a "
                                        "real split (test, or val for choices)")
    project_arg(p)
    p.add_argument("--mix", default="real", choices=["real", "synthetic", "real+synthetic"])
    p.add_argument("--selection", help="synthetic part: a selection")
    p.add_argument("--generation", help="synthetic part: a whole generation")
    p.add_argument("--dataset", help="dataset name or id")
    p.add_argument("--score-generation", metavar="GEN",
                   help="--mix real: after training, the classifier (which never saw them) "
                        "judges every sample of this generation; its confidence in each "
                        "label becomes the 'confidence' score (rcdm-studio scores, Curate tab)")
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
    p.add_argument("--on", default="test", choices=["test", "val"],
                   help="the real split the classifier is scored on: test (the final report, "
                        "default) or val (the validation split, for choices)")
    set_arg(p, "EvalConfig")
    device_arg(p)
    json_arg(p)

    p = sub.add_parser(
        "experiment", help="the paper's experiments (scaling, augmentation, filtering) and the "
                           "recipe search",
        description="scaling: synthetic-only at 1x..4x per generation, with real only as a "
                    "line; augmentation: real, real + AutoAugment / RandAugment / Mixup / "
                    "CutMix, real + 1x and 2x synthetic; filtering: unfiltered 1x vs the "
                    "middle band of 2x. Each configuration runs --seeds times; the jobs are "
                    "queued in the project (a studio open on it runs them) or run now with "
                    "--wait. recipe: search, on the validation split, for the synthetic set "
                    "and the way it joins training that help the classifier most "
                    "(successive halving over bands, guidance, variations, perturbation and "
                    "mixing; --space KEY=VALUE sets the space, e.g. --space "
                    "'perturb=[0,0.5,1]'), then report the winner, real-only and the best "
                    "classical augmentation on test over --seeds seeds. `list` shows the "
                    "experiments, `show ID` one table (`show ID --wait` resumes a search).")
    project_arg(p)
    p.add_argument("action", choices=["scaling", "augmentation", "filtering", "recipe", "list",
                                      "show"])
    p.add_argument("ref", nargs="?", help="experiment id or name (show)")
    p.add_argument("--model", help="recipe: the RCDM that generates the candidates' images "
                                   "(default: the latest trained)")
    p.add_argument("--space", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe: a RecipeSpace option (repeatable), e.g. guidance=[1,2], "
                        "perturb=[0,0.5], variations=[1,2,4], bands=[\"all\",\"middle\"], "
                        "syn_bn=[\"shared\",\"separate\"], budget_epochs=600, "
                        "max_copy_fraction=0.05")
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
    p.add_argument("--on", default="test", choices=["test", "val"],
                   help="the real split every evaluation is scored on (default test)")
    p.add_argument("--wait", action="store_true",
                   help="run the queued jobs now in worker processes and wait for them")
    p.add_argument("--max-running", type=int,
                   help="workers at once with --wait (default: one per GPU, one on a CPU)")
    p.add_argument("--csv", metavar="FILE", help="show: write the table as CSV")
    p.add_argument("--markdown", metavar="FILE", help="show: write the table as Markdown")
    set_arg(p, "EvalConfig (every configuration)")
    device_arg(p)
    json_arg(p)

    p = sub.add_parser("demo", help="run the whole pipeline on the bundled digits dataset",
                       description="Import the digits, encode, train an RCDM and the "
                                   "class-conditioned baseline, generate, re-encode, keep the "
                                   "middle band, evaluate six training mixes, export. With "
                                   "--per-class: the low-data regime, where a recipe search "
                                   "picks the synthetic set on a validation split and the "
                                   "test split scores the result over several seeds.")
    project_arg(p)
    p.add_argument("--quick", action="store_true", help="smaller run (a few minutes on a CPU)")
    p.add_argument("--per-class", type=per_class_list, metavar="N[,N...]",
                   help="the low-data regime: keep N real training images per class (or "
                        "'all'), carve a 10%% validation split, search the synthetic set on "
                        "it and report on the full dataset's test images; a list such as "
                        "10,25,50,all runs each regime in its own project (NAME-nN.duckdb) "
                        "and prints one table")
    p.add_argument("--seeds", type=int, default=3,
                   help="--per-class: classifier seeds per reported figure (default 3)")
    p.add_argument("--export", metavar="DIR", help="export folder (default: in the assets)")
    p.add_argument("--encoder", default="pca", choices=["pca", "simclr"],
                   help="offline image encoder to condition on (pca or simclr; the class "
                        "baseline is always trained beside it)")
    p.add_argument("--channels", choices=["auto", "1", "3"], default="auto",
                   help="channels of the RCDMs' images: auto (default: the digits are "
                        "greyscale, so 1), 1, or 3 (RGB, as demos before greyscale models)")
    json_arg(p)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.project import Evaluation
    from engine.stages import evaluate_stage

    with open_project(args) as project:
        config = with_sets(EvalConfig(arch=args.arch, epochs=args.epochs, seed=args.seed,
                                      device=args.device, augment=args.augment,
                                      schedule=args.schedule, processes=args.processes),
                           args.sets)
        job = run_job(project, evaluate_stage.prepare(project, config, mix=args.mix,
                                             dataset_ref=args.dataset,
                                             selection_ref=args.selection,
                                             generation_ref=args.generation, name=args.name,
                                             split=args.on,
                                             score_generation=args.score_generation))
        e = project.get(Evaluation, job.result_id)
        judged = e.results.get("judged")
    emit(args, {"id": e.id, "name": e.name, "mix": e.mix, "top1": e.top1, "top5": e.top5,
                 "eval_split": e.eval_split, "train_images": e.num_train,
                 "test_images": e.num_test, "judged": judged},
          f"evaluation {e.name}: {e.mix} ({e.num_train} images), top-1 {e.top1:.2f} %, "
          f"top-5 {e.top5:.2f} % on {e.num_test} real {e.eval_split} images"
          + (f"; judged {judged['count']:,} samples of generation {judged['generation_id']} "
             f"(rcdm-studio scores --sort confidence)" if judged else ""))
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

    with open_project(args, create=args.action not in ("list", "show")) as project:
        if args.action == "recipe" or (args.action == "show" and args.ref and
                                       experiments.get(project, args.ref)["kind"] == "recipe"):
            return _recipe(project, args)
        if args.action == "list":
            table = experiments.summary_table(project)
            emit(args, {"experiments": table.to_dict(orient="records")},
                  table.to_string(index=False) if len(table) else "no experiment yet")
            return 0
        if args.action == "show":
            if not args.ref:
                raise StudioError("experiment show needs an experiment id or name; "
                                  "`rcdm-studio experiment list` shows them")
            record = experiments.get(project, args.ref)
        else:
            config = with_sets(EvalConfig(
                arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
                augment=args.augment, schedule=args.schedule, seed=args.seed,
                device=args.device), args.sets)
            jobs = JobManager(project, max_running=args.max_running)
            record = experiments.launch(
                project, args.action, args.generation, config, submit=jobs.create,
                seeds=args.seeds, name=args.name, split=args.on, **({"sizes": tuple(args.sizes)}
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
    emit(args, {"id": record["id"], "name": record["name"], "kind": record["kind"],
                 "eval_split": record["split"], **st,
                 "table": json.loads(table.to_json(orient="records")), **written}, text)
    return 0 if st["status"] != "incomplete" else 1


def _recipe(project: Any, args: argparse.Namespace) -> int:
    """`experiment recipe` (a new search) and `experiment show ID` of one: advance the search
    (with --wait: run its jobs here until it is done; a later `show ID --wait` resumes), then
    print the candidates (validation) and the final report (test)."""
    from engine import recipe, settings
    from engine.config import RecipeSpace
    from engine.jobs import JobManager

    jobs = JobManager(project, max_running=args.max_running)
    if args.action == "recipe":
        space = with_sets(RecipeSpace(report_seeds=args.seeds), args.space)
        eval_config = with_sets(EvalConfig(
            arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
            augment=args.augment, schedule=args.schedule, seed=args.seed,
            device=args.device), args.sets)
        prefs = settings.effective(project)
        generate_config = GenerateConfig(sampler=prefs["gen_sampler"], steps=prefs["gen_steps"],
                                         device=args.device)
        record = recipe.start(project, space, eval_config, generate_config,
                              model_ref=args.model, name=args.name)
        print(f"recipe search {record['name']} ({record['id']}) started", file=sys.stderr)
    else:
        record = {"id": recipe.load(project, args.ref)[0].id}
    if args.wait:
        with interruptible() as (bar, cancel):
            record = recipe.advance(
                project, record["id"],
                submit=lambda spec: jobs.run_inline(spec, progress=bar, cancel=cancel))
    else:
        record = recipe.advance(project, record["id"], submit=jobs.create)
    row, state = recipe.load(project, record["id"])
    candidates, report = recipe.table(state), recipe.report_table(state)
    winner = recipe.winner_selection(state)
    text = (f"recipe search {row.name} ({row.id}): {state['phase']}, "
            f"{recipe.queued_epochs(state)} evaluation-epochs queued so far\n\n"
            "candidates (top-1 on the validation split):\n"
            + (candidates.to_string(index=False, float_format="%.2f") if len(candidates)
               else "none yet"))
    if len(report):
        text += "\n\nfinal report (top-1 on the test split, mean ± std over seeds):\n" + \
            report.to_string(index=False, float_format="%.2f")
    if recipe.verdict(state):
        text += f"\n\n{recipe.verdict_text(state)}"
    if winner:
        text += f"\n\nthe winner's selection: {winner} (export it with `rcdm-studio export " \
                f"--selection {winner}`)"
    if state["phase"] != "done" and not args.wait:
        text += (f"\n\nits jobs are queued; run them now with `rcdm-studio experiment show "
                 f"{row.id} --wait` (it resumes where the search stands)")
    emit(args, {"id": row.id, "name": row.name, "kind": "recipe", "phase": state["phase"],
                "verdict": recipe.verdict(state),
                "candidates": json.loads(candidates.to_json(orient="records")),
                "report": json.loads(report.to_json(orient="records")),
                "winner_selection": winner}, text)
    return 0


def per_class_list(text: str) -> list[int | None]:
    """``--per-class``: ``25``, ``all`` or a list ``10,25,50,all`` (None = all)."""
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            out.append(None)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise argparse.ArgumentTypeError(
                f"expected N >= 1, 'all' or a list such as 10,25,50,all, got {text!r}")
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import DemoConfig, regimes_table, results_table, run_demo

    config = (DemoConfig.quick() if args.quick else DemoConfig()).with_encoder(args.encoder)
    if args.channels != "auto":
        config = replace(config, train=config.train.replace(channels=int(args.channels)))
    if not 1 <= args.seeds <= 20:
        raise InvalidConfigError(f"--seeds must be in [1, 20], got {args.seeds}")
    regimes = args.per_class or [0]  # 0: the full demo, no --per-class
    many = len(regimes) > 1
    from engine.paths import resolve_project

    # without --project: the demo project, the one the studio's Projects tab opens
    base, results = Path(args.project or resolve_project("demo")), []
    for n in regimes:
        cfg = config if n == 0 else config.with_per_class(n, seeds=args.seeds)
        export = Path(args.export) if args.export else None
        if many:  # one project (and export folder) per regime
            tag = f"n{n or 'all'}"
            args.project = str(base.with_name(f"{base.name.removesuffix('.duckdb')}-{tag}"
                                              f".duckdb"))
            export = export / tag if export else None
            print(f"== {n or 'all'} real training images per class: {args.project}",
                  file=sys.stderr)
        with interruptible() as (bar, cancel), open_project(args) as project:
            results.append(run_demo(project, cfg, export, progress=bar, cancel=cancel,
                                    say=lambda m: print(m, file=sys.stderr)))
        print(results_table(results[-1]))
    if many:
        print(regimes_table(results))
    if args.json:
        print(json.dumps({"regimes": results} if many else results[0]))
    return 0


COMMANDS = {
    "evaluate": cmd_evaluate,
    "experiment": cmd_experiment,
    "demo": cmd_demo,
}
