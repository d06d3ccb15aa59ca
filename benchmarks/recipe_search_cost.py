"""The recipe search's cost against the exhaustive grid, at equal winner quality.

The exhaustive grid trains every candidate for the full ``rungs[-1]`` epochs on validation
and keeps the best; the search (``engine.recipe``: successive halving) trains all of them
for ``rungs[0]`` epochs and only the top ``1/eta`` further. Both then run the same baselines
and report, so only the candidates' evaluation-epochs are compared.

Winner quality is the grid's own validation top-1 (at the full epochs) of each method's
winner: the search is "as good" when its winner is on average within ``--tol`` p.p. of the
grid's; the JSON also gives the worst trial and in how many trials it was within ``--tol``.

- ``--fake``: a deterministic stand-in for classifier training, to check the machinery now:
  each candidate has a true quality and a learning speed (curves can cross, as real ones do),
  and every score carries seeded noise of ``--noise`` p.p. Repeated over ``--trials`` seeds.
- without ``--fake``: on a project of the low-data demo (``rcdm-studio demo --quick
  --per-class 25``), over ``demo_space`` (32 candidates on the demo's own generations): the
  search runs through the real stages with ``JobManager.run_inline``, then the grid
  evaluates every materialised candidate at the full epochs on validation. Not run in CI:
  it trains about 50 classifiers (about 15 minutes on 2 cores).

The last line printed is one JSON object: {"claim", "ratio" (grid epochs / search epochs),
"goal", "met", ...}.

Usage: python benchmarks/recipe_search_cost.py --fake [--trials 20] [--noise 0.5]
       python benchmarks/recipe_search_cost.py --project PATH [--model rcdm-pca]
"""

from __future__ import annotations

import argparse
import json
import math
import zlib

import numpy as np

from engine import recipe
from engine.config import EvalConfig, RecipeSpace

GOAL = 3.0  # the search spends at most a third of the grid's evaluation-epochs


def demo_space() -> RecipeSpace:
    """32 candidates on the low-data demo's two generations (perturbation 0 and 0.5, 4x; the
    demo made them, so nothing is generated again): 4 variations x 4 bands."""
    return RecipeSpace(guidance=(1.0,), perturb=(0.0, 0.5), variations=(1, 2, 3, 4),
                       bands=("all", "middle", "nearest", "outliers"), classical=(),
                       rungs=(2, 6, 18), eta=3, report_seeds=1, budget_epochs=1_000_000,
                       baseline_epoch_factors=(1,))


def benchmark_space(budget: int = 1_000_000) -> RecipeSpace:
    """120 candidates: 3 guidance x 2 perturbations x 4 variations x 5 bands."""
    return RecipeSpace(guidance=(1.0, 2.0, 3.0), perturb=(0.0, 0.1), variations=(1, 2, 3, 4),
                       bands=("all", "middle", "nearest", "farthest", "outliers"),
                       classical=("autoaugment", "randaugment", "mixup", "cutmix"),
                       rungs=(2, 6, 18), eta=3, report_seeds=3, max_generations=6,
                       budget_epochs=budget)


class FakeScorer:
    """Validation top-1 of a candidate trained ``epochs`` epochs: ``100 q (1 - exp(-e /
    tau))`` plus seeded noise; ``q`` and ``tau`` are drawn per candidate from its settings'
    hash and the trial's seed."""

    def __init__(self, trial: int, noise: float) -> None:
        self.trial, self.noise = trial, noise

    def _rng(self, *parts: object) -> np.random.Generator:
        return np.random.default_rng(zlib.crc32(repr((self.trial, *parts)).encode()))

    def truth(self, c: dict) -> tuple[float, float]:
        rng = self._rng(c["gen_key"], c["variations"], c["band"])
        q = 0.6 + 0.02 * c["variations"] + {"middle": 0.03, "outliers": 0.02}.get(c["band"], 0)
        return q + rng.normal(0, 0.03), rng.uniform(2.0, 8.0)

    def score(self, c: dict, epochs: int, seed: int) -> float:
        q, tau = self.truth(c)
        noise = self._rng(c["id"], epochs, seed).normal(0, self.noise)
        return 100 * q * (1 - math.exp(-epochs / tau)) + noise


def fake_trial(space: RecipeSpace, trial: int, noise: float) -> dict:
    state = recipe.new_state(space)
    by_id = {c["id"]: c for c in state["candidates"]}
    scorer = FakeScorer(trial, noise)
    full = space.rungs[-1]
    grid = {cid: scorer.score(c, full, space.seed) for cid, c in by_id.items()}

    def make(req: dict) -> dict:
        return {"selection_id": req["candidate"], "count": 100, "copy_fraction": 0.0}

    def evaluate(req: dict) -> dict:
        if req["arm"] in by_id:
            return {"top1": scorer.score(by_id[req["arm"]], req["epochs"], req["seed"])}
        return {"top1": 60.0}

    state = recipe.search(state, make, evaluate)
    grid_best = max(grid, key=grid.get)
    spent = sum(r["epochs"] for r in state["finished"].values() if r.get("phase") == "search")
    return {"grid_epochs": len(by_id) * full, "search_epochs": spent,
            "grid_winner_top1": grid[grid_best], "search_winner_top1": grid[state["winner"]]}


def demo_run(args: argparse.Namespace, space: RecipeSpace) -> dict:
    """The search, then the grid, through the real stages (one process, jobs inline)."""
    from engine.jobs import JobManager
    from engine.project import Evaluation, Project

    base = EvalConfig(epochs=space.rungs[-1], batch_size=args.batch_size)
    with Project(args.project) as project:
        jobs = JobManager(project, max_running=1)
        record = recipe.start(project, space, base, dataset_ref=args.dataset,
                              model_ref=args.model, name="recipe-cost")
        recipe.advance(project, record["id"], submit=jobs.run_inline, report=False)
        _, state = recipe.load(project, record["id"])
        spent = sum(r["epochs"] for r in state["finished"].values()
                    if r.get("phase") == "search")
        grid = {}
        for c in state["candidates"]:
            made = state["made"].get(c["id"])
            if not made or c["id"] in state["excluded"]:
                continue
            req = {"epochs": space.rungs[-1], "seed": space.seed, "augment": None}
            spec = recipe.prepare_evaluation(
                project, recipe.eval_config_for(base, req, c), record["dataset_id"],
                "real+synthetic", made["selection_id"], "val", name=f"grid/{c['id']}")
            jobs.run_inline(spec)
            grid[c["id"]] = project.get(Evaluation, spec.params["evaluation_id"]).top1
    best = max(grid, key=grid.get)
    return {"grid_epochs": len(grid) * space.rungs[-1], "search_epochs": spent,
            "grid_winner_top1": grid[best], "search_winner_top1": grid[state["winner"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fake", action="store_true", help="a fake scorer instead of training")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.5, help="fake score noise, p.p.")
    parser.add_argument("--tol", type=float, default=1.0,
                        help="winner quality tolerance, p.p. of validation top-1")
    parser.add_argument("--project", help="a project with a trained RCDM (not with --fake)")
    parser.add_argument("--model", default="rcdm-pca", help="the RCDM (default: the demo's)")
    parser.add_argument("--dataset")
    parser.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    args = parser.parse_args(argv)
    space = benchmark_space() if args.fake else demo_space()
    if args.fake:
        runs = [fake_trial(space, t, args.noise) for t in range(args.trials)]
    elif args.project:
        runs = [demo_run(args, space)]
    else:
        parser.error("give --fake, or --project PATH")
    grid_e = sum(r["grid_epochs"] for r in runs)
    search_e = sum(r["search_epochs"] for r in runs)
    gaps = [r["grid_winner_top1"] - r["search_winner_top1"] for r in runs]
    ratio = grid_e / max(search_e, 1)
    equal = sum(g <= args.tol for g in gaps)
    for i, (r, g) in enumerate(zip(runs, gaps)):
        print(f"trial {i:2d}: grid {r['grid_epochs']:5d} ep, search {r['search_epochs']:5d} ep, "
              f"winner top-1 grid {r['grid_winner_top1']:.2f} search "
              f"{r['search_winner_top1']:.2f} (gap {g:+.2f})")
    mean_gap = float(np.mean(gaps))
    met = ratio >= GOAL and mean_gap <= args.tol
    print(json.dumps({"claim": "successive halving's winner is on average within tol p.p. "
                               "(validation top-1) of the exhaustive grid's, for at most "
                               "1/goal of its evaluation-epochs",
                      "ratio": round(ratio, 3), "goal": GOAL, "met": met,
                      "mode": "fake" if args.fake else "demo", "trials": len(runs),
                      "equal_quality": f"{equal}/{len(runs)}", "tol_pp": args.tol,
                      "mean_gap_pp": round(mean_gap, 3),
                      "max_gap_pp": round(float(np.max(gaps)), 3),
                      "candidates": len(recipe.candidates(space))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
