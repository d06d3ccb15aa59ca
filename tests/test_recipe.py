"""The recipe search: its space, successive halving, resume, the test split kept for the
report, memorisation exclusion, the budget, and the driver over the real stages (tiny).

The state machine is pure, so most tests drive it with a deterministic fake scorer: each
candidate has a true quality q, and a classifier trained for e epochs scores
``100 q (1 - exp(-e / 4))`` on validation (curves never cross, so the true best is knowable).
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest

from engine import recipe
from engine.config import EvalConfig, RecipeSpace
from engine.errors import InvalidConfigError, NotReadyError, SplitLeakError

# 9 candidates: 3 bands x 3 variations, one generation
NINE = dict(bands=("all", "middle", "nearest"), variations=(1, 2, 3), classical=("mixup",),
            rungs=(1, 3, 9), eta=3, report_seeds=2, budget_epochs=10_000,
            baseline_epoch_factors=(1,))


def quality(c: dict) -> float:
    """A fixed, distinct true quality per candidate (band and variations matter)."""
    band = {"all": 0.60, "middle": 0.70, "nearest": 0.50, "farthest": 0.40, "outliers": 0.65}
    return band[c["band"]] + 0.03 * c["variations"] + 0.001 * c["guidance"] \
        - 0.02 * c["perturb"] + (0.01 if c["syn_bn"] == "separate" else 0.0)


class FakeLab:
    """Scores requests like a classifier would; counts every evaluation per key; the test
    split's labels are poisoned until ``unlock`` (the report phase)."""

    def __init__(self, state: dict, copy_fraction: dict | None = None,
                 seconds: float = 0.0) -> None:
        self.by_id = {c["id"]: c for c in state["candidates"]}
        self.calls: dict[str, int] = {}
        self.copy_fraction = copy_fraction or {}
        self.seconds = seconds
        self.unlocked = False
        self.val_labels = np.arange(10) % 3
        self._test_labels = np.arange(10) % 3

    def test_labels(self) -> np.ndarray:
        if not self.unlocked:
            raise SplitLeakError("test labels read before the final report")
        return self._test_labels

    def labels(self, split: str) -> np.ndarray:
        return self.val_labels if split == "val" else self.test_labels()

    def make(self, req: dict) -> dict:
        self.calls[req["key"]] = self.calls.get(req["key"], 0) + 1
        return {"selection_id": f"sel-{req['candidate']}", "count": 10,
                "copy_fraction": self.copy_fraction.get(req["candidate"], 0.0)}

    def evaluate(self, req: dict) -> dict:
        self.calls[req["key"]] = self.calls.get(req["key"], 0) + 1
        self.labels(req["split"])  # what a real evaluation reads
        arm = req["arm"]
        q = quality(self.by_id[arm]) if arm in self.by_id else \
            {"real": 0.55, "mixup": 0.62, "autoaugment": 0.6}.get(arm, 0.5)
        q += 0.001 * (req["seed"] % 3)
        return {"top1": 100 * q * (1 - math.exp(-req["epochs"] / 4)), "seconds": self.seconds}

    def evaluate_test(self, req: dict) -> dict:
        self.unlocked = True
        return self.evaluate(req)


def run_all(space: RecipeSpace, **lab_options) -> tuple[dict, FakeLab]:
    state = recipe.new_state(space)
    lab = FakeLab(state, **lab_options)
    state = recipe.search(state, lab.make, lab.evaluate)
    if state["phase"] == "chosen":
        state = recipe.report(state, lab.evaluate_test)
    return state, lab


# ----------------------------------------------------------------------------- the space


@pytest.mark.parametrize("bad, value", [
    ({"variations": (0, 2)}, "[0]"), ({"variations": (5,)}, "[5]"),
    ({"guidance": (-1.0,)}, "[-1.0]"), ({"perturb": (4.5,)}, "[4.5]"),
    ({"syn_fraction": (1.0,)}, "[1.0]"), ({"syn_weight": (0.0,)}, "[0.0]"),
    ({"bands": ("widest",)}, "widest"), ({"syn_bn": ("both",)}, "both"),
    ({"curriculum": ("real_first",)}, "real_first"), ({"rungs": (3, 3)}, "(3, 3)"),
    ({"eta": 1}, "got 1"), ({"report_seeds": 0}, "got 0"), ({"budget_epochs": 0}, "got 0"),
    ({"max_copy_fraction": 1.5}, "1.5"), ({"bands": ()}, "()"),
    ({"classical": ("meada",)}, "meada")])
def test_space_refuses_values_out_of_bounds(bad, value):
    with pytest.raises(InvalidConfigError) as err:
        RecipeSpace(**bad)
    assert value in str(err.value)


def test_space_round_trips_through_json():
    space = RecipeSpace(syn_fraction=(None, 0.5), guidance=(1.0, 2.0))
    assert RecipeSpace.from_dict(json.loads(space.to_json())) == space


def test_enumeration_dedups_axes_and_equivalent_bands():
    space = RecipeSpace(guidance=(1, 1.0, 2.0), variations=(2, 1, 2), perturb=(0.0, 0),
                        bands=("all", "middle", "nearest", "farthest", "outliers"),
                        keep_fraction=1.0, syn_bn=("shared", "separate", "shared"))
    cands = recipe.all_candidates(space)
    # 2 guidance x 2 variations x 2 bands (the four presets keep everything at 1.0) x 2 BN
    assert len(cands) == 16
    assert {c["band"] for c in cands} == {"all", "outliers"}
    settings = [tuple(c[k] for k in ("gen_key", "variations", "band", *recipe.MIXING_FIELDS))
                for c in cands]
    assert len(set(settings)) == len(settings)
    assert len({c["id"] for c in cands}) == 16
    # generation-major: each generation's candidates are contiguous
    keys = [c["gen_key"] for c in cands]
    assert keys == sorted(keys)
    assert recipe.generations_needed(cands) == {
        "g1-p0": {"guidance": 1.0, "perturb": 0.0, "variations": 2},
        "g2-p0": {"guidance": 2.0, "perturb": 0.0, "variations": 2}}


def test_a_space_larger_than_the_budget_is_sampled_with_its_seed():
    space = RecipeSpace(guidance=(1.0, 2.0, 3.0), perturb=(0.0, 0.1), variations=(1, 2, 3, 4),
                        bands=("all", "middle", "nearest", "farthest", "outliers"),
                        max_generations=3, rungs=(2, 6), eta=3, report_seeds=2,
                        classical=("mixup", "cutmix"), budget_epochs=400)
    picked = recipe.candidates(space)
    assert len(picked) == recipe.affordable(space, 10**6) < len(recipe.all_candidates(space))
    assert len({c["gen_key"] for c in picked}) <= 3
    assert recipe.halving_cost(len(picked), space.rungs, space.eta) + \
        recipe.fixed_cost(space) <= space.budget_epochs
    assert picked == recipe.candidates(space)  # seeded
    assert picked != recipe.candidates(space.replace(seed=1))
    with pytest.raises(InvalidConfigError, match="budget_epochs=10 is too small"):
        recipe.candidates(space.replace(budget_epochs=10))


# ----------------------------------------------------------------------------- halving


def test_successive_halving_keeps_the_top_third_and_stops_the_weak_early():
    space = RecipeSpace(**NINE)
    state, lab = run_all(space)
    t = recipe.table(state)
    rung0 = t.set_index("candidate")["val top-1 @1ep"]
    assert rung0.notna().all()  # all nine ran one epoch
    top3 = set(rung0.sort_values(ascending=False).index[:3])
    ran3 = set(t.loc[t["val top-1 @3ep"].notna(), "candidate"])
    assert ran3 == top3
    assert t["val top-1 @9ep"].notna().sum() == 1
    best = max(state["candidates"], key=quality)["id"]
    assert state["winner"] == best and t.loc[t["winner"], "candidate"].item() == best
    assert set(t.loc[~t["candidate"].isin(top3), "epochs"]) == {1}  # weak: stopped at 1 epoch
    assert state["phase"] == "done" and state["best_classical"] == "mixup"
    # every evaluation ran once, and the count matches the plan
    assert set(lab.calls.values()) == {1}
    assert recipe.queued_epochs(state) == \
        recipe.halving_cost(9, space.rungs, space.eta) + recipe.fixed_cost(space)
    rep = recipe.report_table(state)
    assert rep["arm"].tolist() == [best, "real", "mixup"]
    assert (rep["seeds"] == 2).all() and rep["test top-1 std"].notna().all()
    assert rep.loc[0, "test top-1 mean"] > rep.loc[1, "test top-1 mean"]
    assert recipe.winner_selection(state) == f"sel-{best}"
    assert recipe.winner_selection(recipe.new_state(space)) is None


def test_baselines_train_at_several_lengths_and_report_at_their_best_on_validation():
    """A synthetic mix has more images, so more optimizer steps per epoch: real-only, the
    classical augmentations and the winner try ``rungs[-1]`` x each factor on validation, and
    the report trains each at the length it chose (real-only peaks at 27 here, the others at
    the longest)."""
    space = RecipeSpace(**{**NINE, "baseline_epoch_factors": (1, 3, 9)})
    state = recipe.new_state(space)
    lab = FakeLab(state)
    plain = lab.evaluate

    def evaluate(req):
        if req["arm"] == "real":
            return {"top1": {9: 50.0, 27: 60.0, 81: 55.0}[req["epochs"]]}
        return plain(req)

    state = recipe.search(state, lab.make, evaluate)
    assert sorted(k for k in lab.calls if k.startswith("baseline/mixup")) == \
        ["baseline/mixup@27", "baseline/mixup@81", "baseline/mixup@9"]
    win = state["winner"]
    # the winner, too, tried the longer lengths (its 9 epochs came from the search)
    assert sorted(k for k in lab.calls if k.startswith(f"baseline/{win}")) == \
        [f"baseline/{win}@27", f"baseline/{win}@81"]
    assert state["baseline_epochs"] == {"real": 27, "mixup": 81, win: 81}
    state, queue = recipe.start_report(state)
    lengths = {(r["arm"], r["epochs"]) for r in queue}
    assert lengths == {(win, 81), ("real", 27), ("mixup", 81)}
    rep = recipe.report_table(state).set_index("arm")
    assert rep.loc["real", "epochs"] == 27 and rep.loc["real", "val top-1"] == 60.0
    assert rep.loc[win, "epochs"] == 81 and state["best_classical"] == "mixup"
    # what the plan counted covers what was queued (the report counted at the longest)
    assert recipe.queued_epochs(state) <= \
        recipe.halving_cost(9, space.rungs, space.eta) + recipe.fixed_cost(space)


def test_the_verdict_recommends_synthetic_data_only_when_it_wins_on_validation():
    """Once the winner is fixed (before any test evaluation), the verdict compares it with
    real only and the best classical augmentation on validation; synthetic data has to win
    outright, ties go to real only."""
    space = RecipeSpace(**NINE)
    state = recipe.new_state(space)
    assert recipe.verdict(state) is None and recipe.verdict_text(state) == ""
    lab = FakeLab(state)
    state = recipe.search(state, lab.make, lab.evaluate)  # candidates beat mixup and real
    v = recipe.verdict(state)
    assert state["phase"] == "chosen" and v["helps"] and v["use"] == state["winner"]
    assert set(v["val"]) == {"real", "mixup", state["winner"]}
    assert "the synthetic set helps" in recipe.verdict_text(state)

    def strong_mixup(req):
        if req["arm"] == "mixup":
            return {"top1": 99.5}
        return lab.evaluate(req)

    state = recipe.search(recipe.new_state(space), lab.make, strong_mixup)
    v = recipe.verdict(state)
    assert not v["helps"] and v["use"] == "mixup" and v["label"] == "real + mixup"
    assert "does not beat real + mixup (99.50)" in recipe.verdict_text(state)

    def tie_with_real(req):  # every arm scores the same on validation
        return {"top1": 90.0}

    state = recipe.search(recipe.new_state(space), lab.make, tie_with_real)
    assert recipe.verdict(state)["use"] == "real"


def test_a_version_1_state_without_lengths_still_reports():
    """Searches saved before the baselines had lengths kept one score per baseline."""
    space = RecipeSpace(**NINE)
    state, _ = run_all(space)
    old = json.loads(json.dumps(state))
    old["baselines"] = {a: s[str(space.rungs[-1])] for a, s in old["baselines"].items()}
    del old["space"]["baseline_epoch_factors"], old["baseline_epochs"]
    rep = recipe.report_table(old).set_index("arm")
    assert rep.loc["real", "val top-1"] == state["baselines"]["real"]["9"]
    assert recipe.space_of(old).baseline_epoch_factors == (1,)


def test_the_budget_bounds_every_evaluation_queued():
    space = RecipeSpace(**{**NINE, "budget_epochs": 90})  # affords 5 of the 9
    state, _ = run_all(space)
    assert len(state["candidates"]) == recipe.affordable(space, 9) < 9
    assert recipe.queued_epochs(state) <= 90


def test_a_wall_clock_budget_stops_promotions():
    space = RecipeSpace(**{**NINE, "budget_seconds": 5.0})
    state, _ = run_all(space, seconds=1.0)  # rung 0 alone takes 9 + 2 baseline seconds
    t = recipe.table(state)
    assert t["val top-1 @3ep"].isna().all() and t["val top-1 @9ep"].isna().all()
    assert state["stop_reason"] == "time budget spent"
    best0 = t.sort_values("val top-1 @1ep", ascending=False)["candidate"].iloc[0]
    assert state["winner"] == best0


# ----------------------------------------------------------------------------- resume


def test_resume_from_a_saved_half_done_state_repeats_no_finished_work():
    space = RecipeSpace(**NINE)
    whole, _ = run_all(space)
    # half-done: materialised, then only some rung-0 evaluations came back before a restart
    state = recipe.new_state(space)
    lab = FakeLab(state)
    state, queue = recipe.step(state, [])
    state, queue = recipe.step(state, [{"key": r["key"], **lab.make(r)} for r in queue])
    first = [r for r in queue if r["phase"] == "search"][:5]
    state, _ = recipe.step(state, [{"key": r["key"], **lab.evaluate(r)} for r in first])
    saved = json.dumps(state)  # what the Experiment row holds
    resumed = recipe.search(json.loads(saved), lab.make, lab.evaluate)
    resumed = recipe.report(resumed, lab.evaluate_test)
    assert set(lab.calls.values()) == {1}, {k: v for k, v in lab.calls.items() if v > 1}
    assert resumed["winner"] == whole["winner"]
    assert recipe.queued_epochs(resumed) == recipe.queued_epochs(whole)
    # a result fed twice is ignored
    again, new = recipe.step(resumed, [{"key": first[0]["key"], "top1": 0.0}])
    assert again == resumed and new == []


# ----------------------------------------------------------------------------- test split


def test_the_search_never_reads_test_labels_before_the_report():
    space = RecipeSpace(**NINE)
    state = recipe.new_state(space)
    lab = FakeLab(state)
    # the poison works: reading test labels now fails
    with pytest.raises(SplitLeakError):
        lab.labels("test")
    # the search alone: any test request would read the poisoned labels and fail
    state = recipe.search(state, lab.make, lab.evaluate)
    assert state["phase"] == "chosen" and state["winner"]
    splits = {r["split"] for r in state["finished"].values() if r["kind"] == "evaluate"}
    assert splits == {"val"}
    # the report is the only way to the test split, and only once the winner is fixed
    with pytest.raises(SplitLeakError):
        recipe.start_report(recipe.new_state(space))
    state = recipe.report(state, lab.evaluate_test)
    tests = [r for r in state["finished"].values() if r.get("split") == "test"]
    assert len(tests) == 3 * space.report_seeds and all(r["phase"] == "report" for r in tests)


def test_the_in_process_search_refuses_a_test_request():
    space = RecipeSpace(**NINE)
    state = recipe.new_state(space)
    lab = FakeLab(state)
    state, _ = recipe.step(state, [])
    # a state whose pending work asks for the test split (as a buggy step would)
    key = next(iter(state["pending"]))
    state["pending"][key] = {**state["pending"][key], "kind": "evaluate", "split": "test",
                             "phase": "search", "arm": "c000", "epochs": 1, "seed": 0}
    with pytest.raises(SplitLeakError):
        recipe.search(state, lab.make, lab.evaluate)


# ----------------------------------------------------------------------------- memorisation


def test_candidates_above_the_copy_threshold_are_excluded_when_asked():
    copies = {"c000": 0.5, "c004": 0.2, "c008": 0.01}
    space = RecipeSpace(**{**NINE, "max_copy_fraction": 0.1})
    state, lab = run_all(space, copy_fraction=copies)
    t = recipe.table(state).set_index("candidate")
    assert t.loc["c000", "excluded"].startswith("near-copy fraction 0.500")
    assert t.loc["c004", "excluded"].startswith("near-copy fraction 0.200")
    assert t.loc["c008", "excluded"] == ""
    assert t.loc["c004", "near-copy fraction"] == pytest.approx(0.2)
    evaluated = {k.rsplit("/", 1)[1] for k in lab.calls if k.startswith("search/")}
    assert evaluated and not evaluated & {"c000", "c004"}
    assert t.loc[["c000", "c004"], "epochs"].tolist() == [0, 0]
    assert state["winner"] not in ("c000", "c004")
    # without a threshold the fractions are shown and nothing is excluded
    state, _ = run_all(RecipeSpace(**NINE), copy_fraction=copies)
    assert (recipe.table(state)["excluded"] == "").all()


# ----------------------------------------------------------------------------- adapters


def test_adapters_refuse_options_the_stages_do_not_have_yet():
    cand = {"syn_weight": 1.0, "syn_fraction": None, "syn_bn": "shared",
            "curriculum": "mixed"}
    req = {"epochs": 3, "seed": 5, "augment": None}
    config = recipe.eval_config_for(EvalConfig(), req, cand)
    assert (config.epochs, config.seed) == (3, 5)
    assert recipe.eval_config_for(EvalConfig(), {**req, "augment": "mixup"}, None).augment \
        == "mixup"
    if "syn_bn" not in EvalConfig().to_dict():  # TODO(issue 12c): goes once it lands
        with pytest.raises(NotReadyError, match="syn_bn"):
            recipe.eval_config_for(EvalConfig(), req, {**cand, "syn_bn": "separate"})
    from engine.config import GenerateConfig

    gen = recipe.generate_config_for(GenerateConfig(steps=7), 2.5, 3, 0.0)
    assert (gen.guidance, gen.variations, gen.steps, gen.mode) == (2.5, 3, 7, "variations")
    assert recipe.generate_config_for(GenerateConfig(), 1.0, 1, 0.1).perturb == 0.1


# ----------------------------------------------------------------------------- the driver


@pytest.fixture
def lab_project(tmp_path, tiny_folder):
    """A tiny project: 24 images in 3 classes, a PCA encoding, a re-encoded 4x stand-in
    generation (noisy copies of the training images; see tests/test_experiments.py)."""
    from conftest import import_folder

    from engine.config import EncodeConfig, ImportConfig
    from engine.jobs import JobManager
    from engine.project import Project
    from engine.stages import encode_stage
    from tests.test_experiments import add_noisy_generation

    path = tmp_path / "lab"
    with Project(path) as project:
        # 8 images a class: 2 test, 2 validation (the search's split), 4 train
        ds = import_folder(project, tiny_folder, "tiny",
                           ImportConfig(test_fraction=0.25, val_fraction=0.25))
        jobs = JobManager(project, max_running=1)
        jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca", dim=4,
                                                                   image_size=8),
                                             dataset_ref=ds.id))
        gen = add_noisy_generation(project, ds.id, 4, "noisy-x4")
        jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca"),
                                             generation_ref=gen.id))
    return path, ds.id, gen.id


TINY_EVAL = EvalConfig(arch="resnet_tiny", image_size=8, epochs=1, batch_size=16,
                       warmup_epochs=0)
TINY_SPACE = RecipeSpace(bands=("all", "middle", "outliers"), variations=(1, 2),
                         classical=("mixup",), rungs=(1, 2), eta=2, report_seeds=1,
                         budget_epochs=100)


def test_materialise_saves_the_band_of_the_first_variations_and_its_copy_fraction(lab_project):
    from engine.project import Project, Selection

    path, _, gen_id = lab_project
    with Project(path) as project:
        cands = {(c["band"], c["variations"]): c for c in recipe.all_candidates(TINY_SPACE)}
        all1 = recipe.materialise(project, cands[("all", 1)], gen_id, TINY_SPACE)
        mid2 = recipe.materialise(project, cands[("middle", 2)], gen_id, TINY_SPACE)
        out2 = recipe.materialise(project, cands[("outliers", 2)], gen_id, TINY_SPACE)
        n_train = 12  # 24 images, a quarter for test, a quarter for validation
        assert all1["count"] == n_train and mid2["count"] == n_train
        assert n_train < out2["count"] <= 2 * n_train
        members = project.selection_members(project.get(Selection, mid2["selection_id"]))
        idx = project.samples(gen_id)["idx"].to_numpy()[members]
        assert (idx % 4 < 2).all()  # only the first two variations of each source
        for r in (all1, mid2, out2):
            assert 0.0 <= r["copy_fraction"] <= 1.0
        # a second call reuses the saved selection
        count = len(project.list(Selection))
        assert recipe.materialise(project, cands[("middle", 2)], gen_id, TINY_SPACE) == mid2
        assert len(project.list(Selection)) == count


def test_driver_runs_a_tiny_search_and_reports_on_test_last(lab_project, monkeypatch):
    from engine.jobs import JobManager
    from engine.project import Evaluation, Project
    from engine.stages import evaluate_stage

    splits: list[str] = []
    real_prepare = evaluate_stage.prepare

    @functools.wraps(real_prepare)  # keeps the signature the driver inspects
    def spy(*args, **kwargs):
        splits.append(kwargs.get("split", "test"))
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(evaluate_stage, "prepare", spy)
    path, ds_id, _ = lab_project
    with Project(path) as project:
        jobs = JobManager(project, max_running=1)
        space = TINY_SPACE.replace(bands=("all", "middle"))  # 4 candidates
        record = recipe.start(project, space, TINY_EVAL, dataset_ref=ds_id)
        record = recipe.advance(project, record["id"], submit=jobs.run_inline)
        assert record["status"] == "done"
        _, state = recipe.load(project, record["id"])
        first_test = splits.index("test")
        assert set(splits[:first_test]) == {"val"} and set(splits[first_test:]) == {"test"}
        assert splits.count("test") == 3 * space.report_seeds
        assert state["phase"] == "done" and recipe.queued_epochs(state) <= space.budget_epochs
        cand, rep = recipe.results(project, record["id"])
        assert cand["winner"].sum() == 1 and rep["seeds"].tolist() == [1, 1, 1]
        n = len(project.list(Evaluation))
        recipe.advance(project, record["id"], submit=jobs.run_inline)
        assert len(project.list(Evaluation)) == n  # a finished search queues nothing


def test_recipe_figure_draws_each_evaluated_candidate_and_marks_the_winner():
    from studio.figures import recipe_figure

    state, _ = run_all(RecipeSpace(**{**NINE, "max_copy_fraction": 0.1}),
                       copy_fraction={"c000": 0.5})
    fig = recipe_figure(recipe.table(state))
    assert len(fig.data) == 8  # nine candidates, one excluded
    winners = [t for t in fig.data if t.showlegend]
    assert len(winners) == 1 and list(winners[0].x) == [1, 3, 9]
    # 8 at 1 epoch, top 8 // 3 = 2 at 3 epochs, the best at 9
    assert sorted(len(t.x) for t in fig.data) == [1] * 6 + [2, 3]


def test_driver_generates_each_generation_once_and_reencodes_it(tmp_path):
    """The expensive axis: one generation per (guidance, lambda) at the largest variations,
    re-encoded, shared by its candidates; a second advance makes nothing twice."""
    from engine.config import GenerateConfig
    from engine.jobs import JobManager
    from engine.project import Encoding, Generation, Project
    from tests.conftest import tiny_generation_project

    path, model_id = tiny_generation_project(tmp_path, val_fraction=0.25)
    space = RecipeSpace(guidance=(1.0, 2.0), perturb=(0.0, 0.5), variations=(1, 2),
                        bands=("all",), max_generations=2,
                        classical=("mixup",), rungs=(1, 2), eta=2, report_seeds=1,
                        budget_epochs=100)
    with Project(path) as project:
        jobs = JobManager(project, max_running=1)
        record = recipe.start(project, space, TINY_EVAL, GenerateConfig(steps=2, batch_size=64),
                              model_ref=model_id)

        def advance():
            return recipe.advance(project, record["id"], submit=jobs.run_inline)

        advance()
        gens = project.list(Generation)
        _, state = recipe.load(project, record["id"])
        keys = sorted({c["gen_key"] for c in state["candidates"]})
        assert len(keys) == 2  # max_generations of the four (guidance, lambda) pairs
        assert sorted(recipe.generation_key(g.config["guidance"], g.config["perturb"])
                      for g in gens) == keys
        assert {g.variations for g in gens} == {2} and {g.count for g in gens} == {24}
        assert all(project.list(Encoding, target="generation", target_id=g.id) for g in gens)
        _, state = recipe.load(project, record["id"])
        assert len(state["made"]) == 4 and not state["excluded"]
        counts = {c["id"]: state["made"][c["id"]]["count"] for c in state["candidates"]}
        assert sorted(counts.values()) == [12, 12, 24, 24]
        advance()
        assert len(project.list(Generation)) == 2


def test_cli_recipe_runs_the_search_then_resumes_without_redoing_work(tmp_path, capsys):
    """`rcdm-studio experiment recipe --wait`: the whole search through the command line,
    validation first, the report on test; `experiment show ID --wait` afterwards queues
    nothing new; `experiment list` lists it."""
    import json

    from engine.project import Evaluation, Project
    from studio.cli import main
    from tests.conftest import tiny_generation_project

    path, model_id = tiny_generation_project(tmp_path, val_fraction=0.25)
    code = main(["experiment", "recipe", "--project", str(path), "--model", model_id,
                 "--arch", "resnet_tiny", "--epochs", "1", "--batch-size", "16", "--seeds", "1",
                 "--set", "image_size=8", "--set", "warmup_epochs=0",
                 "--space", 'bands=["all","middle"]', "--space", "variations=[1]",
                 "--space", "rungs=[1,2]", "--space", "eta=2",
                 "--space", 'classical=["mixup"]', "--wait", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["kind"] == "recipe" and out["phase"] == "done"
    assert len(out["candidates"]) == 2 and sum(bool(c["winner"]) for c in out["candidates"]) == 1
    assert len(out["report"]) == 3 and out["winner_selection"]
    with Project(path) as project:
        evals = project.list(Evaluation)
        splits = [e.eval_split for e in evals]
        assert splits.count("test") == 3 and splits.count("val") >= 3
        assert splits.index("test") > max(i for i, s in enumerate(splits) if s == "val")
    assert main(["experiment", "show", out["id"], "--project", str(path), "--wait",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["phase"] == "done" and again["report"] == out["report"]
    with Project(path) as project:
        assert len(project.list(Evaluation)) == len(evals)
    assert main(["experiment", "list", "--project", str(path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [e["kind"] for e in listed["experiments"]] == ["recipe"]


def test_cli_recipe_refuses_a_dataset_without_validation_split(tmp_path, capsys):
    """One sentence, exit code 2, and no Experiment row left behind."""
    from engine import experiments
    from engine.project import Project
    from studio.cli import main
    from tests.conftest import tiny_generation_project

    path, model_id = tiny_generation_project(tmp_path)  # no validation split
    code = main(["experiment", "recipe", "--project", str(path), "--model", model_id,
                 "--wait"])
    err = capsys.readouterr().err
    assert code == 2 and "no validation split" in err and "Traceback" not in err
    with Project(path) as project:
        assert experiments.list_experiments(project) == []
