"""Evaluate tab: train a classifier on a training mix, compare top-1 / top-5 of every run;
find the synthetic set that helps most (the recipe search, ``engine.recipe``: choices on the
validation split, the final report on test); launch the paper's experiments (scaling,
augmentation, filtering) and read their tables.

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import pandas as pd

import engine.recipe  # engine.recipe.*: the tab's recipe() is the classifier's EvalConfig
from engine import experiments
from engine.config import AUGMENTS, CLASSIFIERS, MIXES, RECIPE_BANDS, EvalConfig, RecipeSpace
from engine.errors import InvalidConfigError, NotReadyError
from engine.jobs import ACTIVE
from engine.project import Dataset, Evaluation, Generation, Job, Model, Selection, reads
from engine.settings import device, effective
from studio import figures, ui
from studio.choices import job_progress, model_choices, selection_choices
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

MIX_LABELS = {"real": "real only", "synthetic": "synthetic only (a selection)",
              "real+synthetic": "real + synthetic (a selection)"}


OPTIONS_HELP = ("<small>Any other recipe option, one <code>KEY=VALUE</code> per line, e.g. "
                "<code>batch_size=128</code>, <code>label_smoothing=0.1</code>, "
                "<code>meada_adv_lr=0.25</code>, <code>processes=2</code> (one per GPU). "
                "How synthetic images join training: <code>syn_weight=0.5</code> (their loss "
                "weight), <code>syn_fraction=0.5</code> (their share of every batch), "
                "<code>syn_bn=separate</code> (their own BatchNorm statistics), "
                "<code>curriculum=synthetic_then_real</code>. "
                "The same as <code>--set</code> on the command line.</small>")


def recipe(ctx: StudioContext, arch: str, epochs: int, augment: str = EvalConfig.augment,
           options: str | None = "") -> EvalConfig:
    """The form's recipe: classifier, epochs, augmentation, the project's device, then the
    ``KEY=VALUE`` lines of ``options`` (``engine.config.with_overrides``)."""
    from engine.config import with_overrides

    config = EvalConfig(arch=arch, epochs=int(epochs), augment=augment or EvalConfig.augment,
                        device=device(ctx.project))
    return with_overrides(config, (options or "").splitlines())


def evaluate(ctx: StudioContext, mix: str, dataset_id: str | None, selection_id: str | None,
             arch: str, epochs: int, name: str | None, augment: str = EvalConfig.augment,
             options: str | None = "", split: str = "test", judge: bool = False) -> Job:
    """Queue an evaluation of ``mix`` scored on the real ``split`` (``"test"`` or ``"val"``).

    ``judge`` (mix "real" only): the classifier, trained on real images only, then judges
    every sample of the selection's generation (``evaluate_stage.prepare``'s
    ``score_generation``): the Curate tab's confidence score."""
    from engine.stages import evaluate_stage

    if mix not in MIXES:
        raise InvalidConfigError(f"mix must be one of {MIXES}, got {mix!r}")
    if mix != "real" and not selection_id:
        raise NotReadyError(f"the {MIX_LABELS[mix]} mix needs a selection: save one in the "
                            f"Curate tab")
    if mix == "real" and not dataset_id:
        raise NotReadyError("import a dataset first (Data tab)")
    score_generation = None
    if judge and mix == "real":
        if not selection_id:
            raise NotReadyError("judging a generation needs a selection of it: choose one "
                                "(its whole generation is judged)")
        score_generation = ctx.project.get(Selection, selection_id).generation_id
    config = recipe(ctx, arch, epochs, augment, options)
    return ctx.submit(evaluate_stage.prepare(
        ctx.project, config, mix=mix, dataset_ref=dataset_id if mix == "real" else None,
        selection_ref=selection_id if mix != "real" else None,
        name=(name or "").strip() or None, split=split or "test",
        score_generation=score_generation))


def results_table(ctx: StudioContext) -> pd.DataFrame:
    sels = {s.id: s.name for s in ctx.project.list(Selection)}
    rows = []
    for e in ctx.project.list(Evaluation):
        cfg = e.config
        rows.append([e.name, MIX_LABELS.get(e.mix, e.mix).split(" (")[0],
                     sels.get(e.selection_id, ""), ui.pct(e.top1), ui.pct(e.top5),
                     e.eval_split, e.status,
                     e.num_train, f"{cfg.get('arch', '')}, {cfg.get('epochs', '')} ep"
                     + (f", {cfg['augment']}" if cfg.get("augment", "crop") != "crop" else "")
                     + (f", seed {cfg['seed']}" if cfg.get("seed") else "")])
    return pd.DataFrame(rows, columns=["evaluation", "mix", "selection", "top-1 %", "top-5 %",
                                       "split", "status", "images", "classifier"])


SHOWN_BARS = 20  # single evaluations drawn in the top-1 chart


def results_figure(ctx: StudioContext) -> Any:
    import plotly.graph_objects as go

    done = [e for e in ctx.project.list(Evaluation) if e.status == "done" and e.top1 is not None]
    # experiments have their own chart below: this one shows the single evaluations, the
    # latest SHOWN_BARS of them
    members = {m["evaluation_id"] for r in experiments.list_experiments(ctx.project)
               for m in r.get("members", [])}
    done = [e for e in done if e.id not in members][-SHOWN_BARS:]
    fig = go.Figure()
    colors = {"real": "#DD8452", "synthetic": "#4C72B0", "real+synthetic": "#55A868"}
    for mix in MIXES:
        rows = [e for e in done if e.mix == mix]
        if rows:
            fig.add_trace(go.Bar(x=[f"{e.name} ({e.eval_split})" for e in rows],
                                 y=[e.top1 for e in rows],
                                 name=MIX_LABELS[mix].split(" (")[0],
                                 marker_color=colors[mix],
                                 text=[f"{e.top1:.1f}" for e in rows], textposition="outside",
                                 cliponaxis=False))  # labels above 100 % stay readable
    fig.update_layout(template="plotly_white", height=340,
                      title=dict(text="Top-1 accuracy on a held-out real split (in brackets: "
                                      "test, or val for choices)"
                                 if done else "No finished evaluation yet", x=0.01),
                      yaxis=dict(title="top-1 %", range=figures.ACCURACY_RANGE),  # from 0
                      margin=dict(l=60, r=20, t=90, b=60), barmode="group",
                      legend=dict(orientation="h", yanchor="bottom", y=1.08, x=1,
                                  xanchor="right"))
    return fig


def running_text(ctx: StudioContext) -> str:
    lines = []
    for job in ctx.project.list(Job, kind="evaluate"):
        if job.status not in ACTIVE:
            continue
        p = job_progress(ctx, job)
        eta = f", about {ui.duration(p['eta'])} left" if p["eta"] else ""
        lines.append(f"- **{job.title}**: {job.status} {p['percent']:.0f} %{eta} "
                     f"{('· ' + p['metric']) if p['metric'] else ''}")
    return "\n".join(lines) if lines else "<small>No evaluation running.</small>"


# ---------------------------------------------------------------------- an evaluation's page

SPLIT_NAMES = {"test": "test", "val": "validation"}
PAGE_HELP = ("<small>Click a row of the table above, or pick an evaluation here. Every "
             "number on the page comes from the held-out real split it was scored on, named "
             "with it.</small>")
COMPARE_HELP = ("<small>Tick two or more evaluations: their loss and top-1 curves overlaid "
                "(the legend names each run and its split; click a name to hide it) and "
                "their configs side by side, the fields that differ first (≠).</small>")


def evaluation_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    """Every evaluation, newest last: ``name · top-1 % (split)`` or its status."""
    out = []
    for e in ctx.project.list(Evaluation):
        what = (f"top-1 {e.top1:.2f} % ({e.eval_split})" if e.top1 is not None
                else e.status)
        out.append((f"{e.name} · {what}", e.id))
    return out


def _mix_text(ctx: StudioContext, ev: Evaluation) -> str:
    mix = MIX_LABELS.get(ev.mix, ev.mix).split(" (")[0]
    if ev.selection_id:
        mix += f" (selection {reads.row_name(ctx.project, Selection, ev.selection_id)})"
    elif ev.generation_id:
        mix += f" (generation {reads.row_name(ctx.project, Generation, ev.generation_id)})"
    return mix


def page_summary(ctx: StudioContext, report: reads.EvaluationReport) -> str:
    """The page's heading (Markdown): top-1 / top-5 with their split, the mix, the recipe."""
    ev, res = report.evaluation, report.evaluation.results
    split = SPLIT_NAMES.get(ev.eval_split, ev.eval_split)
    cfg = ev.config
    head = f"**{ui.escape(ev.name)}** · {ui.escape(_mix_text(ctx, ev))} · {ev.status}"
    if ev.top1 is not None:
        head += (f"  \ntop-1 **{ev.top1:.2f} %**, top-5 **{ui.pct(ev.top5)} %** on the "
                 f"**{split}** split ({ev.num_test:,} real images)")
    else:
        head += f"  \nto be scored on the **{split}** split ({ev.num_test:,} real images)"
    synthetic = res.get("num_synthetic")
    head += (f"  \ntrained on {ev.num_train:,} images"
             + (f" ({synthetic:,} synthetic)" if synthetic else "")
             + f" · {cfg.get('arch', '?')}, {cfg.get('epochs', '?')} epochs, augmentation "
               f"{cfg.get('augment', '?')}, seed {cfg.get('seed', 0)}"
             + (f" · {ui.duration(res['seconds'])} of training" if res.get("seconds") else ""))
    if report.missing:
        why = ("it has not finished" if ev.status != "done"
               else "it was recorded without them")
        head += f"  \n<small>Not shown: {', '.join(report.missing)} ({why}).</small>"
    return head


PAGE_EMPTY = "<small>No evaluation picked: click a row of the table above.</small>"
CONFUSION_COLUMNS = ["true class", "predicted as", "images", "% of the class"]


def evaluation_page(ctx: StudioContext, eval_id: str | None) -> tuple[Any, ...]:
    """An evaluation's page: (summary, per-class figure, confusion figure, curves figure, top
    confusions table, config table); empty views without one."""
    if not eval_id:
        return (PAGE_EMPTY, None, None, None, pd.DataFrame(columns=CONFUSION_COLUMNS),
                pd.DataFrame(columns=["field", "value"]))
    report = reads.evaluation_report(ctx.project, eval_id)
    ev = report.evaluation
    split = SPLIT_NAMES.get(ev.eval_split, ev.eval_split)
    per_class = (figures.per_class_figure(report.per_class, split,
                                          f"{ev.name}: accuracy per class ({split} split)")
                 if len(report.per_class) else None)
    confusion = (figures.confusion_figure(report.confusion, report.classes, split,
                                          f"Confusion matrix ({split} split)")
                 if report.confusion is not None else None)
    curves = (figures.curves_figure({f"{ev.name} ({ev.eval_split})": report.curves},
                                    f"{ev.name}: per epoch (held-out: the {split} split)")
              if len(report.curves) else None)
    top = (reads.top_confusions(report.confusion, report.classes)
           if report.confusion is not None else pd.DataFrame(columns=CONFUSION_COLUMNS))
    config = reads.config_table({ev.name: reads.evaluation_settings(ctx.project, ev)})
    config = config.drop(columns="differs").set_axis(["field", "value"], axis=1)
    return page_summary(ctx, report), per_class, confusion, curves, top, config


def compare_view(ctx: StudioContext, eval_ids: list[str] | None) -> tuple[Any, Any]:
    """(curves overlaid, configs side by side) of the ticked evaluations."""
    ids = [i for i in dict.fromkeys(eval_ids or []) if i]
    if not ids:
        return None, pd.DataFrame(columns=["field", "differs"])
    curves, settings, splits = {}, {}, set()
    for i in ids:
        report = reads.evaluation_report(ctx.project, i)
        ev = report.evaluation
        curves[f"{ev.name} ({ev.eval_split})"] = report.curves
        settings[ev.name] = reads.evaluation_settings(ctx.project, ev)
        splits.add(ev.eval_split)
    held_out = (f"held-out: the {SPLIT_NAMES.get(splits.pop(), '')} split"
                if len(splits) == 1 else "held-out: each run's split, in brackets")
    fig = figures.curves_figure(curves, f"{len(ids)} evaluation(s) compared ({held_out})")
    return fig, reads.config_table(settings)


def latest_done(ctx: StudioContext) -> str | None:
    done = [e.id for e in ctx.project.list(Evaluation) if e.status == "done"]
    return done[-1] if done else None


@ui.guard(7, status=1)
def pick_evaluation(ctx: StudioContext, evt: gr.SelectData) -> tuple[Any, ...]:
    """A click in the evaluations table opens that row's evaluation (by its name)."""
    row = evt.row_value or []
    if not row or not row[0]:
        return (gr.skip(),) * 7
    ev = ctx.project.get(Evaluation, str(row[0]))
    return (ev.id, *evaluation_page(ctx, ev.id))


@ui.guard(6)
def show_evaluation(ctx: StudioContext, eval_id: str | None) -> tuple[Any, ...]:
    return evaluation_page(ctx, eval_id)


def show_compare(ctx: StudioContext, eval_ids: list[str] | None) -> tuple[Any, Any]:
    try:
        fig, table = compare_view(ctx, eval_ids)
        return fig, figures.config_styled(table)
    except Exception as exc:  # noqa: BLE001 - shown as a toast, the views keep their values
        log.exception("compare failed")
        gr.Warning(ui.error_text(exc))
        return gr.skip(), gr.skip()


def refresh_page(ctx: StudioContext, eval_id: str | None,
                 compared: list[str] | None) -> tuple[Any, ...]:
    """The page's lists and views: the evaluation shown (the latest finished one by default)
    and the ticked ones that still exist."""
    choices = evaluation_choices(ctx)
    ids = [v for _, v in choices]
    current = eval_id if eval_id in ids else latest_done(ctx)
    ticked = [i for i in (compared or []) if i in ids]
    fig, table = compare_view(ctx, ticked)
    return (gr.update(choices=choices, value=current), *evaluation_page(ctx, current),
            gr.update(choices=choices, value=ticked), fig, figures.config_styled(table))


EXPERIMENT_LABELS = {
    "scaling": "Scaling: synthetic only at 1x..4x, real only as a line (Fig. 2)",
    "augmentation": "Augmentation vs synthetic: real + AutoAugment / RandAugment / Mixup / "
                    "CutMix vs real + 1x, 2x synthetic (Table 2)",
    "filtering": "Filtering: unfiltered 1x vs the middle band of 2x (Table 1)"}


def generation_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    out = []
    for g in ctx.project.list(Generation):
        k = g.variations
        out.append((f"{g.name} · {g.count:,} images · {k} per image", g.id))
    return out


def experiment_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    return [(f"{r['name']} · {r['kind']}", r["id"])
            for r in experiments.list_experiments(ctx.project)]


def launch_experiment(ctx: StudioContext, kind: str, generation_ids: list[str] | None,
                      seeds: int, arch: str, epochs: int, name: str | None,
                      options: str | None = "", with_meada: bool = False,
                      split: str = "test") -> dict[str, Any]:
    """Plan the experiment, record it in the project and queue its evaluations, each scored
    on the real ``split`` (``"test"`` or ``"val"``).

    ``with_meada`` adds ME-ADA to the augmentation experiment's classical baselines (it is
    left out by default: it costs about as much again as a plain run)."""
    if kind not in experiments.KINDS:
        raise InvalidConfigError(f"pick an experiment: one of {experiments.KINDS}")
    config = recipe(ctx, arch, epochs, EvalConfig.augment, options)
    extra: dict[str, Any] = {}
    if kind == "augmentation" and with_meada:
        extra["augmentations"] = experiments.CLASSICAL
    return experiments.launch(ctx.project, kind, list(generation_ids or []), config,
                              submit=ctx.submit, seeds=int(seeds),
                              name=(name or "").strip() or None, split=split or "test",
                              **extra)


def experiment_view(ctx: StudioContext, exp_id: str | None) -> tuple[Any, Any, Any, Any]:
    """(table, figure, CSV path, Markdown path) of an experiment; empty without one."""
    if not exp_id:
        empty = pd.DataFrame(columns=["training data", "images", "seeds", "top-1 %", "top-5 %",
                                      "split"])
        return empty, None, gr.update(value=None, visible=False), \
            gr.update(value=None, visible=False)
    record = experiments.get(ctx.project, exp_id)
    if record["kind"] == "recipe":  # its candidates (validation); the report is below
        _, state = engine.recipe.load(ctx.project, exp_id)
        return (recipe_candidates(state),
                figures.recipe_figure(engine.recipe.table(state), record["name"]),
                gr.update(value=None, visible=False), gr.update(value=None, visible=False))
    paths = experiments.export(ctx.project, record)
    return (experiments.formatted_table(ctx.project, record),
            figures.experiment_figure(experiments.table(ctx.project, record), record),
            gr.update(value=paths["csv"], visible=True),
            gr.update(value=paths["markdown"], visible=True))


# ---------------------------------------------------------------------- the recipe search

RECIPE_HELP = (
    "<small>One click searches which synthetic set, and how it joins training, helps your "
    "classifier most: the curation band, guidance, variations per image, perturbation "
    "&lambda; and the mixing options. Weak candidates stop early (successive halving) within "
    "the budget. <b>Every choice is made on the validation split</b>; the winner, real only "
    "and the best classical augmentation are then trained once per seed and reported on the "
    "<b>test split</b> (mean &plusmn; std). The dataset needs a validation split: import it "
    "with a validation fraction (Data tab, <i>Splits</i>). Everything runs as queued jobs "
    "(Jobs panel) while the studio is open; the result shows under Experiments.</small>")
BAND_LABELS = {"all": "all (no curation)", "middle": "middle band",
               "nearest": "nearest to the class centre", "farthest": "farthest from it",
               "outliers": "all but outliers"}
SYN_WEIGHTS = (0.25, 0.5, 1.0, 2.0)  # the loss weights the form offers
PHASE_TEXT = {"materialise": "searching on validation", "search": "searching on validation",
              "chosen": "final report on test", "report": "final report on test",
              "done": "done"}
SPACE_HELP = ("<small>Any other search option, one <code>KEY=VALUE</code> per line, e.g. "
              "<code>eta=2</code>, <code>keep_fraction=0.5</code>, "
              "<code>classical=[\"mixup\"]</code>, <code>syn_fraction=[0.5]</code>, "
              "<code>budget_seconds=3600</code> (the same as <code>--space</code> of "
              "<code>rcdm-studio experiment recipe</code>); the classifier's options as in "
              "the recipe options above (<code>--set</code>).</small>")


def numbers(text: str | None, name: str, whole: bool = False) -> tuple:
    """The comma-separated numbers of a text field (``"1, 2.5"`` -> ``(1.0, 2.5)``).

    Raises:
        InvalidConfigError: an item that is not a number (a whole one with ``whole``).
    """
    out: list[float | int] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item) if whole else float(item))
        except ValueError:
            what = "whole numbers" if whole else "numbers"
            raise InvalidConfigError(f"{name} must be comma-separated {what}, got {item!r}"
                                     ) from None
    return tuple(out)


def recipe_space(bands: list[str] | None, variations: list[int] | None, guidance: str | None,
                 perturb: str | None, separate_bn: bool, curriculum: bool,
                 syn_weights: list[float] | None, budget: float | None, rungs: str | None,
                 max_copy_pct: float | None, seeds: float | None,
                 options: str | None = "") -> RecipeSpace:
    """The search form as a ``RecipeSpace`` (its ``validate`` checks every bound).

    ``separate_bn`` / ``curriculum`` add separate BatchNorm / the synthetic-then-real
    curriculum to the space (beside the shared / mixed default); ``max_copy_pct`` is a
    percentage (None: nothing is excluded); ``options`` are ``KEY=VALUE`` lines of any other
    field (``engine.config.with_overrides``).

    Raises:
        InvalidConfigError: a value out of its bounds, named with the value.
    """
    from engine.config import with_overrides

    limit = None
    if max_copy_pct is not None and max_copy_pct == max_copy_pct:  # NaN: an emptied field
        if not 0.0 <= float(max_copy_pct) < 100.0:
            raise InvalidConfigError(f"the near-copy limit must be a percentage in [0, 100) "
                                     f"(empty: keep all), got {max_copy_pct}")
        limit = float(max_copy_pct) / 100.0
    space = RecipeSpace(
        bands=tuple(bands or ()),
        variations=tuple(int(v) for v in variations or ()),
        guidance=numbers(guidance, "guidance"), perturb=numbers(perturb, "perturbation λ"),
        syn_weight=tuple(float(w) for w in syn_weights or ()),
        syn_bn=("shared", "separate") if separate_bn else ("shared",),
        curriculum=("mixed", "synthetic_then_real") if curriculum else ("mixed",),
        budget_epochs=int(budget if budget is not None else RecipeSpace.budget_epochs),
        rungs=numbers(rungs, "rungs", whole=True),
        report_seeds=int(seeds if seeds is not None else RecipeSpace.report_seeds),
        max_copy_fraction=limit)
    return with_overrides(space, (options or "").splitlines())


def recipe_dataset(ctx: StudioContext, model_id: str | None) -> Dataset:
    """The dataset a search on ``model_id`` runs on; refused without a validation split.

    Raises:
        NotReadyError: no model picked, or its dataset has no validation split.
    """
    if not model_id:
        raise NotReadyError("pick a trained RCDM (Train tab): it generates the candidates")
    ds = ctx.project.get(Dataset, ctx.project.get(Model, model_id).dataset_id)
    if ds.num_val == 0:
        raise NotReadyError(f"dataset {ds.name} has no validation split: the search makes "
                            f"every choice on validation and keeps the test split for the "
                            f"final report. Import it with a validation fraction (Data tab, "
                            f"Splits), then train on it")
    return ds


def launch_recipe(ctx: StudioContext, model_id: str | None, seeds: float | None, arch: str,
                  epochs: float, bands: list[str] | None, variations: list[int] | None,
                  guidance: str | None, perturb: str | None, separate_bn: bool,
                  curriculum: bool, syn_weights: list[float] | None, budget: float | None,
                  rungs: str | None, max_copy_pct: float | None, space_options: str | None,
                  eval_options: str | None, name: str | None) -> dict[str, Any]:
    """Start a recipe search (``engine.recipe.start``) and queue its first jobs
    (``advance``); ``ctx.poll`` advances it as they finish. Returns the experiment's record.

    Raises:
        NotReadyError: no trained model, or no validation split.
        InvalidConfigError: a form value out of bounds.
    """
    from engine.config import GenerateConfig

    recipe_dataset(ctx, model_id)
    space = recipe_space(bands, variations, guidance, perturb, separate_bn, curriculum,
                         syn_weights, budget, rungs, max_copy_pct, seeds, space_options)
    config = recipe(ctx, arch, int(epochs), EvalConfig.augment, eval_options)
    prefs = effective(ctx.project)
    generate = GenerateConfig(sampler=prefs["gen_sampler"], steps=int(prefs["gen_steps"]),
                              device=device(ctx.project))
    record = engine.recipe.start(ctx.project, space, config, generate, model_ref=model_id,
                                 name=(name or "").strip() or None)
    return ctx.advance_recipe(record["id"])


def recipe_candidates(state: dict[str, Any]) -> pd.DataFrame:
    """The candidates table for reading (``engine.recipe.table``): validation top-1 % per
    rung, evaluation-epochs spent, near-copy %, why it was excluded, the winner."""
    t = engine.recipe.table(state)
    if not len(t):
        return pd.DataFrame(columns=["candidate", "settings", "images", "epochs",
                                     "near-copies %", "excluded", "winner"])
    rungs = [c for c in t.columns if c.startswith("val top-1 @")]
    out = pd.DataFrame({"candidate": t["candidate"], "settings": t["label"],
                        "images": ["" if n != n else int(n) for n in t["images"]]})
    for c in rungs:
        out[f"val top-1 % {c[len('val top-1 '):]}"] = [ui.pct(v) for v in t[c]]
    out["epochs"] = t["epochs"]
    out["near-copies %"] = [ui.pct(100.0 * f) for f in t["near-copy fraction"]]
    out["excluded"] = t["excluded"]
    out["winner"] = ["★" if w else "" for w in t["winner"]]
    return out


def _mean_std(mean: float, std: float) -> str:
    if mean != mean:
        return ""
    return f"{mean:.2f}" if std != std else f"{mean:.2f} ± {std:.2f}"


REPORT_COLUMNS = ["training data", "epochs", "val top-1 %", "seeds",
                  "test top-1 % (mean ± std)"]


def recipe_report(state: dict[str, Any]) -> pd.DataFrame:
    """The final report for reading (``engine.recipe.report_table``): the winner, real only
    and the best classical augmentation; the epochs each chose on validation, validation
    top-1 (the choice) and test top-1 as mean ± std over the report's seeds (empty until
    they are done)."""
    t = engine.recipe.report_table(state)
    return pd.DataFrame({"training data": t["training data"], "epochs": t["epochs"],
                         "val top-1 %": [ui.pct(v) for v in t["val top-1"]],
                         "seeds": t["seeds"],
                         "test top-1 % (mean ± std)": [
                             _mean_std(m, s) for m, s in zip(t["test top-1 mean"],
                                                            t["test top-1 std"])]},
                        columns=REPORT_COLUMNS)


def recipe_summary(ctx: StudioContext, exp_id: str) -> str:
    """A search's phase, budget spent, stop reason, last error and winner (Markdown)."""
    row, state = engine.recipe.load(ctx.project, exp_id)
    budget = state["space"]["budget_epochs"]
    lines = [f"**{row.name}**: {PHASE_TEXT.get(state['phase'], state['phase'])} · "
             f"{engine.recipe.queued_epochs(state):,} of {budget:,} evaluation-epochs "
             f"queued"]
    if state.get("stop_reason"):
        lines.append(f"stopped early: {state['stop_reason']}")
    if exp_id in ctx.recipe_errors:
        lines.append(f"⚠ the search could not advance: {ui.escape(ctx.recipe_errors[exp_id])}")
    by_id = {c["id"]: c for c in state["candidates"]}
    if state.get("winner") in by_id:
        lines.append(f"the winner (chosen on validation): real + "
                     f"{engine.recipe.candidate_label(by_id[state['winner']])}")
    if engine.recipe.verdict(state):
        lines.append(ui.escape(engine.recipe.verdict_text(state)))
    sel_id = engine.recipe.winner_selection(state)
    if sel_id:
        sel = ctx.project.get(Selection, sel_id)
        lines.append(f"its synthetic set is the selection **{sel.name}** ({sel.count:,} "
                     f"images): pick it in the Curate and Export tabs too")
    return "\n\n".join(lines)


def recipe_view(ctx: StudioContext, exp_id: str | None) -> tuple[Any, Any, Any, Any]:
    """(the recipe box, its summary, the final report, the export button) of an experiment:
    hidden unless it is a recipe search; the export button is live once it is done."""
    record = experiments.get(ctx.project, exp_id) if exp_id else None
    if record is None or record["kind"] != "recipe":
        return (gr.update(visible=False), "", pd.DataFrame(columns=REPORT_COLUMNS),
                gr.update(interactive=False))
    _, state = engine.recipe.load(ctx.project, exp_id)
    done = state["phase"] == "done" and engine.recipe.winner_selection(state) is not None
    return (gr.update(visible=True), recipe_summary(ctx, exp_id), recipe_report(state),
            gr.update(interactive=done))


def export_winner(ctx: StudioContext, exp_id: str | None,
                  include_real: bool = True) -> tuple[Job, str]:
    """Queue the export of a finished search's winner (its selection, as the Export tab
    does); returns the job and the folder it writes.

    Raises:
        NotReadyError: no search picked, or it is not done.
    """
    from engine.config import ExportConfig
    from engine.stages import export_stage

    if not exp_id:
        raise NotReadyError("pick a recipe search under Experiments")
    _, state = engine.recipe.load(ctx.project, exp_id)
    sel_id = engine.recipe.winner_selection(state)
    if state["phase"] != "done" or not sel_id:
        raise NotReadyError(f"the search is not done ({PHASE_TEXT.get(state['phase'])}): "
                            f"its winner is exported once its final report is in")
    spec = export_stage.prepare(ctx.project, ExportConfig(include_real=bool(include_real)),
                                sel_id)
    return ctx.submit(spec), spec.params["out_dir"]


def recipe_models(ctx: StudioContext, current: str | None) -> Any:
    return ui.dropdown(model_choices(ctx, trained_only=True), current)


# ---------------------------------------------------------------------- event handlers


@ui.guard(3)
def on_launch(ctx: StudioContext, kind_v, gens_v, seeds_v, arch_v, epochs_v, name_v,
              options_v="", meada_v=False, split_v="test") -> tuple[Any, ...]:
    record = launch_experiment(ctx, kind_v, gens_v, seeds_v, arch_v, epochs_v, name_v,
                               options_v, bool(meada_v), split_v)
    return (ui.ok_md(f"experiment {record['name']}: {len(record['members'])} evaluations "
                     f"queued (progress in the Jobs panel)"),
            experiments.summary_table(ctx.project),
            ui.dropdown(experiment_choices(ctx), record["id"]))


def refresh_experiments(ctx: StudioContext, gens_v: list[str] | None,
                        exp_id: str | None) -> tuple[Any, ...]:
    """The generation and experiment lists; the experiment shown (the latest by default)."""
    choices = experiment_choices(ctx)
    current = exp_id if exp_id in [v for _, v in choices] else \
        (choices[-1][1] if choices else None)
    gen_ids = [v for _, v in generation_choices(ctx)]
    return (gr.update(choices=generation_choices(ctx),
                      value=[g for g in (gens_v or []) if g in gen_ids]),
            experiments.summary_table(ctx.project),
            gr.update(choices=choices, value=current),
            *show_experiment(ctx, current))


def show_experiment(ctx: StudioContext, exp_id: str | None) -> tuple[Any, ...]:
    """``experiment_view`` then ``recipe_view``: everything the picked experiment shows."""
    return (*experiment_view(ctx, exp_id), *recipe_view(ctx, exp_id))


@ui.guard(3)
def on_recipe(ctx: StudioContext, model_v, seeds_v, arch_v, epochs_v, bands_v, variations_v,
              guidance_v, perturb_v, separate_bn_v, curriculum_v, weights_v, budget_v, rungs_v,
              max_copy_v, space_options_v="", eval_options_v="", name_v=None
              ) -> tuple[Any, ...]:
    record = launch_recipe(ctx, model_v, seeds_v, arch_v, epochs_v, bands_v, variations_v,
                           guidance_v, perturb_v, bool(separate_bn_v), bool(curriculum_v),
                           weights_v, budget_v, rungs_v, max_copy_v, space_options_v,
                           eval_options_v, name_v)
    _, state = engine.recipe.load(ctx.project, record["id"])
    return (ui.ok_md(f"recipe search {record['name']}: {len(state['candidates'])} candidates, "
                     f"{engine.recipe.queued_epochs(state):,} evaluation-epochs queued so far; "
                     f"its first jobs are queued (progress in the Jobs panel, the result under "
                     f"Experiments)"),
            experiments.summary_table(ctx.project),
            ui.dropdown(experiment_choices(ctx), record["id"]))


@ui.guard(1)
def on_recipe_export(ctx: StudioContext, exp_id: str | None, include_real: bool = True) -> str:
    job, folder = export_winner(ctx, exp_id, bool(include_real))
    return ui.ok_md(f"{job.title}: {job.status}; it goes to {folder} (progress in the Jobs "
                    f"panel; listed in the Export tab)")


@ui.guard(2)
def on_run(ctx: StudioContext, mix_v, dataset_id, sel, arch_v, epochs_v, name_v,
           augment_v=EvalConfig.augment, options_v="", split_v="test",
           judge_v=False) -> tuple[str, Any]:
    job = evaluate(ctx, mix_v, dataset_id, sel, arch_v, epochs_v, name_v, augment_v, options_v,
                   split_v, bool(judge_v))
    return ui.ok_md(f"{job.title}: {job.status} (progress in the Jobs panel)"), results_table(ctx)


def default_epochs(ctx: StudioContext) -> int:
    return int(effective(ctx.project)["eval_epochs"])


def live(ctx: StudioContext) -> Any:
    """The running evaluations (the timer's tick); nothing when none runs."""
    if not any(j.status in ACTIVE for j in ctx.project.list(Job, kind="evaluate")):
        return gr.skip()
    return running_text(ctx)


def refresh(ctx: StudioContext, sel: str | None) -> tuple[Any, ...]:
    return (ui.dropdown(selection_choices(ctx), sel), results_table(ctx),
            results_figure(ctx), running_text(ctx))


# ---------------------------------------------------------------------- layout and wiring


def build_recipe(ctx: StudioContext, shared: Shared) -> dict[str, Any]:
    """The search form (layout, its own refreshes); the button is wired in ``build``."""
    gr.Markdown("### Find the synthetic set that helps most\n" + RECIPE_HELP)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            model = gr.Dropdown(label="RCDM (generates the candidates)", choices=[],
                                value=None, allow_custom_value=True, elem_id="recipe-model")
            with gr.Row():
                seeds = gr.Number(label="Seeds for the report", value=RecipeSpace.report_seeds,
                                  precision=0, minimum=1, elem_id="recipe-seeds")
                arch = gr.Dropdown(list(CLASSIFIERS), value=EvalConfig.arch, label="Classifier")
                epochs = gr.Number(label="Classifier base epochs", value=EvalConfig.epochs,
                                   precision=0, minimum=1, elem_id="recipe-epochs")
            name = gr.Textbox(label="Search name", placeholder="default: recipe")
        with gr.Column(scale=2):
            with gr.Accordion("Search space", open=False, elem_id="recipe-space-panel"):
                bands = gr.CheckboxGroup([(BAND_LABELS[b], b) for b in RECIPE_BANDS],
                                         value=list(RecipeSpace.bands), label="Curation bands",
                                         elem_id="recipe-bands")
                with gr.Row():
                    variations = gr.CheckboxGroup([(f"{k}x", k) for k in range(1, 5)],
                                                  value=list(RecipeSpace.variations),
                                                  label="Variations per image",
                                                  elem_id="recipe-variations")
                    guidance = gr.Textbox(label="Guidance values (comma-separated)",
                                          value=", ".join(f"{g:g}" for g in RecipeSpace.guidance),
                                          elem_id="recipe-guidance")
                    perturb = gr.Textbox(label="Perturbation λ values (comma-separated)",
                                         value=", ".join(f"{p:g}" for p in RecipeSpace.perturb),
                                         elem_id="recipe-perturb")
                with gr.Row():
                    weights = gr.CheckboxGroup([(f"{w:g}", w) for w in SYN_WEIGHTS],
                                               value=list(RecipeSpace.syn_weight),
                                               label="Loss weight of synthetic images",
                                               elem_id="recipe-weights")
                    separate_bn = gr.Checkbox(label="Also try separate BatchNorm for synthetic "
                                                    "images", value=False,
                                              elem_id="recipe-sepbn")
                    curriculum = gr.Checkbox(label="Also try synthetic first, then real",
                                             value=False, elem_id="recipe-curriculum")
                with gr.Row():
                    budget = gr.Number(label="Budget (evaluation-epochs)",
                                       value=RecipeSpace.budget_epochs, precision=0, minimum=1,
                                       elem_id="recipe-budget")
                    rungs = gr.Textbox(label="Rungs (epochs, comma-separated)",
                                       value=", ".join(str(r) for r in RecipeSpace.rungs),
                                       elem_id="recipe-rungs")
                    max_copy = gr.Number(label="Exclude candidates with more than X % "
                                               "near-copies (empty: keep all)", value=None,
                                         minimum=0, maximum=100, elem_id="recipe-max-copy")
                with gr.Row():
                    space_options = gr.Textbox(label="Search options (KEY=VALUE lines)",
                                               lines=2, value="", placeholder="eta=2",
                                               elem_id="recipe-space-options")
                    eval_options = gr.Textbox(label="Classifier options (KEY=VALUE lines)",
                                              lines=2, value="", placeholder="batch_size=128",
                                              elem_id="recipe-eval-options")
                gr.HTML(SPACE_HELP)
            button = gr.Button("Find the synthetic set that helps most", variant="primary",
                               elem_id="recipe-button")
            status = gr.HTML(elem_id="recipe-status")

    shared.on_project(ui.bind(default_epochs, ctx), [], [epochs])
    shared.on_refresh(ui.bind(recipe_models, ctx), [model], [model])
    return {"button": button, "status": status,
            "form": [model, seeds, arch, epochs, bands, variations, guidance, perturb,
                     separate_bn, curriculum, weights, budget, rungs, max_copy, space_options,
                     eval_options, name]}


def build_experiments(ctx: StudioContext, shared: Shared) -> dict[str, Any]:
    gr.Markdown("### Experiments\n<small>The paper's comparisons, one click each: every "
                "configuration is trained with the same recipe, once per seed, as queued "
                "background evaluations (live progress in the Jobs panel). The table shows "
                "top-1 / top-5 as mean ± std over seeds.</small>")
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            kind = gr.Radio([(v, k) for k, v in EXPERIMENT_LABELS.items()], value="scaling",
                            label="Experiment", elem_id="exp-kind")
            gens = gr.Dropdown(label="Generation(s): scaling takes one per model; the others "
                                     "one (2 or more variations per image)",
                               choices=[], value=[], multiselect=True, elem_id="exp-generations")
            with gr.Row():
                seeds = gr.Number(label="Seeds", value=3, precision=0, minimum=1,
                                  elem_id="exp-seeds")
                arch = gr.Dropdown(list(CLASSIFIERS), value=EvalConfig.arch, label="Classifier")
                epochs = gr.Number(label="Epochs", value=EvalConfig.epochs, precision=0,
                                   minimum=1, elem_id="exp-epochs")
            with gr.Accordion("Recipe options", open=False, elem_id="exp-options-panel"):
                with_meada = gr.Checkbox(label="Augmentation: also ME-ADA (slower)",
                                         value=False, elem_id="exp-meada")
                exp_options = gr.Textbox(label="KEY=VALUE lines", lines=3, value="",
                                         placeholder="label_smoothing=0.1",
                                         elem_id="exp-options")
                gr.HTML(OPTIONS_HELP)
            name = gr.Textbox(label="Experiment name", placeholder="default: the kind")
            exp_split = gr.Radio([("validation (for choices)", "val"),
                                  ("test (final report)", "test")], value="test",
                                 label="Score on", elem_id="exp-split")
            launch_btn = gr.Button("Launch experiment", variant="primary",
                                   elem_id="exp-button")
            status = gr.HTML(elem_id="exp-status")
        with gr.Column(scale=2):
            listing = gr.Dataframe(value=ui.initial(lambda c: experiments.summary_table(c.project), ctx),
                                   interactive=False, max_height=200, label="Experiments",
                                   elem_id="exp-list", wrap=True)
            with gr.Row(elem_classes=["bottom-align"]):
                chosen = gr.Dropdown(label="Show experiment", choices=[], value=None,
                                     allow_custom_value=True, scale=3, elem_id="exp-choice")
                csv_btn = gr.DownloadButton("CSV", visible=False, scale=1,
                                            elem_id="exp-csv")
                md_btn = gr.DownloadButton("Markdown", visible=False, scale=1,
                                           elem_id="exp-md")
            exp_table = gr.Dataframe(interactive=False, max_height=300, label="Results",
                                     elem_id="exp-table", wrap=True)
            exp_plot = gr.Plot(show_label=False, elem_id="exp-plot")
            with gr.Group(visible=False, elem_id="recipe-view") as recipe_box:
                recipe_text = gr.Markdown(elem_id="recipe-phase")
                report = gr.Dataframe(interactive=False, label="Final report: top-1 on the "
                                      "test split, mean ± std over seeds",
                                      elem_id="recipe-report", wrap=True)
                with gr.Row(elem_classes=["bottom-align"]):
                    export_real = gr.Checkbox(label="with the real training images",
                                              value=True, elem_id="recipe-export-real")
                    export_btn = gr.Button("Export the winner", interactive=False,
                                           elem_id="recipe-export")
                export_status = gr.HTML(elem_id="recipe-export-status")

    exp_form = [kind, gens, seeds, arch, epochs, name, exp_options, with_meada, exp_split]
    exp_view = [exp_table, exp_plot, csv_btn, md_btn, recipe_box, recipe_text, report,
                export_btn]

    launch_btn.click(ui.bind(on_launch, ctx), exp_form, [status, listing, chosen],
                     api_name="experiment")
    chosen.change(ui.guard_refresh(ui.bind(show_experiment, ctx), 8), chosen, exp_view,
                  show_progress="hidden")
    export_btn.click(ui.bind(on_recipe_export, ctx), [chosen, export_real], export_status,
                     api_name="recipe_export")
    shared.on_refresh(ui.bind(refresh_experiments, ctx), [gens, chosen],
                      [gens, listing, chosen, *exp_view])
    return {"listing": listing, "chosen": chosen}


def build_page() -> dict[str, Any]:
    """An evaluation's page and the compare view (layout only; wired in ``build``)."""
    gr.Markdown("### An evaluation's page\n" + PAGE_HELP)
    chosen = gr.Dropdown(label="Evaluation", choices=[], value=None, allow_custom_value=True,
                         elem_id="eval-choice")
    summary = gr.Markdown(PAGE_EMPTY, elem_id="eval-summary")
    with gr.Row():
        per_class = gr.Plot(show_label=False, elem_id="eval-per-class", scale=3)
        confusion = gr.Plot(show_label=False, elem_id="eval-confusion", scale=2)
    curves = gr.Plot(show_label=False, elem_id="eval-curves")
    with gr.Row():
        confusions = gr.Dataframe(interactive=False, label="Top confusions (most often "
                                  "mistaken pairs)", max_height=300, elem_id="eval-confusions",
                                  wrap=True)
        config = gr.Dataframe(interactive=False, label="Config", max_height=300,
                              elem_id="eval-config", wrap=True)
    gr.Markdown("### Compare runs\n" + COMPARE_HELP)
    compared = gr.Dropdown(label="Evaluations to compare", choices=[], value=[],
                           multiselect=True, elem_id="eval-compare")
    compare_plot = gr.Plot(show_label=False, elem_id="eval-compare-plot")
    compare_table = gr.Dataframe(interactive=False, max_height=420, wrap=True,
                                 label="Configs side by side (fields that differ first, ≠)",
                                 elem_id="eval-compare-table")
    return {"chosen": chosen, "views": [summary, per_class, confusion, curves, confusions,
                                        config],
            "compared": compared, "compare_plot": compare_plot,
            "compare_table": compare_table}


def build(ctx: StudioContext, shared: Shared) -> None:
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            mix = gr.Radio([(v, k) for k, v in MIX_LABELS.items()], value="real+synthetic",
                           label="Training mix", elem_id="eval-mix")
            selection = gr.Dropdown(label="Selection (synthetic part)",
                                    choices=[], value=None, allow_custom_value=True,
                                    elem_id="eval-selection")
            with gr.Row():
                arch = gr.Dropdown(list(CLASSIFIERS), value=EvalConfig.arch, label="Classifier")
                epochs = gr.Number(label="Epochs", value=EvalConfig.epochs, precision=0,
                                   minimum=1, elem_id="eval-epochs")
                augment = gr.Dropdown(list(AUGMENTS), value=EvalConfig.augment,
                                      label="Augmentation", elem_id="eval-augment")
            with gr.Accordion("Recipe options", open=False, elem_id="eval-options-panel"):
                options = gr.Textbox(label="KEY=VALUE lines", lines=3, value="",
                                     placeholder="batch_size=128", elem_id="eval-options")
                gr.HTML(OPTIONS_HELP)
            name = gr.Textbox(label="Evaluation name", placeholder="default: the mix")
            split = gr.Radio([("validation (for choices)", "val"), ("test (final report)", "test")],
                             value="test", label="Score on", elem_id="eval-split")
            judge = gr.Checkbox(False, label="Real only: judge the selection's generation",
                                info="after training, the classifier (which never saw them) "
                                     "scores every sample of that generation: the Curate "
                                     "tab's 'classifier confidence' score",
                                elem_id="eval-judge")
            run_btn = gr.Button("Launch evaluation", variant="primary", elem_id="eval-button")
            status = gr.HTML(elem_id="eval-status")
            gr.Markdown("<small>Every mix is scored on held-out real images: the validation "
                        "split (carved from the training images at import) for choices, the "
                        "test split for the final report; the classifier recipe is the same "
                        "for all.</small>")
            running = gr.Markdown(elem_id="eval-running")
        with gr.Column(scale=2):
            plot = gr.Plot(show_label=False, elem_id="eval-plot")
            table = gr.Dataframe(value=ui.initial(results_table, ctx), interactive=False, max_height=280,
                                 label="All evaluations", elem_id="eval-table", wrap=True,
                                 column_widths=["16%", "13%", "14%", "8%", "8%", "6%",
                                                "10%", "8%", "17%"])

    page = build_page()

    form = [mix, shared.dataset, selection, arch, epochs, name, augment, options, split,
            judge]
    views = page["views"]
    compare = [page["compare_plot"], page["compare_table"]]

    shared.on_project(ui.bind(default_epochs, ctx), [], [epochs])
    run_btn.click(ui.bind(on_run, ctx), form, [status, table], api_name="evaluate")
    gr.Timer(3.0).tick(ui.bind(live, ctx), None, running, show_progress="hidden")
    shared.on_refresh(ui.bind(refresh, ctx), [selection], [selection, table, plot, running])
    # a second click while the page is drawn is not lost: the last one wins
    table.select(ui.bind(pick_evaluation, ctx), None, [page["chosen"], *views],
                 show_progress="hidden", trigger_mode="always_last")
    page["chosen"].input(ui.bind(show_evaluation, ctx), page["chosen"], views,
                         show_progress="hidden", trigger_mode="always_last")
    page["compared"].input(ui.bind(show_compare, ctx), page["compared"], compare,
                           show_progress="hidden", trigger_mode="always_last")
    shared.on_refresh(ui.bind(refresh_page, ctx),
                      [page["chosen"], page["compared"]],
                      [page["chosen"], *views, page["compared"], *compare])
    search = build_recipe(ctx, shared)
    shown = build_experiments(ctx, shared)
    search["button"].click(ui.bind(on_recipe, ctx), search["form"],
                           [search["status"], shown["listing"], shown["chosen"]],
                           api_name="recipe")
