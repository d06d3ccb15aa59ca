"""Evaluate tab: train a classifier on a training mix, compare top-1 / top-5 of every run;
launch the paper's experiments (scaling, augmentation, filtering) and read their tables.

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import pandas as pd

from engine import experiments
from engine.config import AUGMENTS, CLASSIFIERS, MIXES, EvalConfig
from engine.errors import InvalidConfigError, NotReadyError
from engine.jobs import ACTIVE
from engine.project import Evaluation, Generation, Job, Selection
from engine.settings import device, effective
from studio import ui
from studio.choices import job_progress, selection_choices
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
             options: str | None = "", split: str = "test") -> Job:
    """Queue an evaluation of ``mix`` scored on the real ``split`` (``"test"`` or ``"val"``)."""
    from engine.stages import evaluate_stage

    if mix not in MIXES:
        raise InvalidConfigError(f"mix must be one of {MIXES}, got {mix!r}")
    if mix != "real" and not selection_id:
        raise NotReadyError(f"the {MIX_LABELS[mix]} mix needs a selection: save one in the "
                            f"Curate tab")
    if mix == "real" and not dataset_id:
        raise NotReadyError("import a dataset first (Data tab)")
    config = recipe(ctx, arch, epochs, augment, options)
    return ctx.submit(evaluate_stage.prepare(
        ctx.project, config, mix=mix, dataset_ref=dataset_id if mix == "real" else None,
        selection_ref=selection_id if mix != "real" else None,
        name=(name or "").strip() or None, split=split or "test"))


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
    lowest = min((e.top1 for e in done), default=0.0)
    floor = max(0.0, (lowest - 5.0) // 5 * 5)  # zoom: accuracies near 100 % look alike
    fig = go.Figure()
    colors = {"real": "#DD8452", "synthetic": "#4C72B0", "real+synthetic": "#55A868"}
    for mix in MIXES:
        rows = [e for e in done if e.mix == mix]
        if rows:
            fig.add_trace(go.Bar(x=[f"{e.name} ({e.eval_split})" for e in rows],
                                 y=[e.top1 for e in rows],
                                 name=MIX_LABELS[mix].split(" (")[0],
                                 marker_color=colors[mix],
                                 text=[f"{e.top1:.1f}" for e in rows], textposition="outside"))
    fig.update_layout(template="plotly_white", height=320,
                      title=dict(text="Top-1 accuracy on a held-out real split (in brackets: "
                                      "test, or val for choices)"
                                 if done else "No finished evaluation yet", x=0.01),
                      yaxis=dict(title="top-1 %", range=[floor, 104]),
                      margin=dict(l=60, r=20, t=50, b=60), barmode="group",
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
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
    from studio import figures

    if not exp_id:
        empty = pd.DataFrame(columns=["training data", "images", "seeds", "top-1 %", "top-5 %",
                                      "split"])
        return empty, None, gr.update(value=None, visible=False), \
            gr.update(value=None, visible=False)
    record = experiments.get(ctx.project, exp_id)
    paths = experiments.export(ctx.project, record)
    return (experiments.formatted_table(ctx.project, record),
            figures.experiment_figure(experiments.table(ctx.project, record), record),
            gr.update(value=paths["csv"], visible=True),
            gr.update(value=paths["markdown"], visible=True))


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
            *experiment_view(ctx, current))


@ui.guard(2)
def on_run(ctx: StudioContext, mix_v, dataset_id, sel, arch_v, epochs_v, name_v,
           augment_v=EvalConfig.augment, options_v="", split_v="test") -> tuple[str, Any]:
    job = evaluate(ctx, mix_v, dataset_id, sel, arch_v, epochs_v, name_v, augment_v, options_v,
                   split_v)
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


def build_experiments(ctx: StudioContext, shared: Shared) -> None:
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
            listing = gr.Dataframe(value=experiments.summary_table(ctx.project),
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

    exp_form = [kind, gens, seeds, arch, epochs, name, exp_options, with_meada, exp_split]
    exp_view = [exp_table, exp_plot, csv_btn, md_btn]

    launch_btn.click(ui.bind(on_launch, ctx), exp_form, [status, listing, chosen],
                     api_name="experiment")
    chosen.change(ui.guard_refresh(ui.bind(experiment_view, ctx), 4), chosen, exp_view,
                  show_progress="hidden")
    shared.on_refresh(ui.bind(refresh_experiments, ctx), [gens, chosen],
                      [gens, listing, chosen, *exp_view])


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
            run_btn = gr.Button("Launch evaluation", variant="primary", elem_id="eval-button")
            status = gr.HTML(elem_id="eval-status")
            gr.Markdown("<small>Every mix is scored on held-out real images: the validation "
                        "split (carved from the training images at import) for choices, the "
                        "test split for the final report; the classifier recipe is the same "
                        "for all.</small>")
            running = gr.Markdown(elem_id="eval-running")
        with gr.Column(scale=2):
            plot = gr.Plot(show_label=False, elem_id="eval-plot")
            table = gr.Dataframe(value=results_table(ctx), interactive=False, max_height=280,
                                 label="All evaluations", elem_id="eval-table", wrap=True,
                                 column_widths=["16%", "13%", "14%", "8%", "8%", "6%",
                                                "10%", "8%", "17%"])

    form = [mix, shared.dataset, selection, arch, epochs, name, augment, options, split]

    shared.on_project(ui.bind(default_epochs, ctx), [], [epochs])
    run_btn.click(ui.bind(on_run, ctx), form, [status, table], api_name="evaluate")
    gr.Timer(3.0).tick(ui.bind(live, ctx), None, running, show_progress="hidden")
    shared.on_refresh(ui.bind(refresh, ctx), [selection], [selection, table, plot, running])
    build_experiments(ctx, shared)
