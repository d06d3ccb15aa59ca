"""The recipe search: which synthetic set, and how it joins training, helps the classifier most.

Three parts, read top to bottom:

1. **The space** (``RecipeSpace`` in ``engine.config``): candidates are (generation settings:
   guidance, variations, perturbation lambda) x (curation band) x (mixing: syn_weight,
   syn_fraction, syn_bn, curriculum). ``candidates(space)`` enumerates, deduplicates and
   orders them generation-major, so candidates share generations: one generation per
   (guidance, lambda) at the largest variations, a candidate with k variations taking the first
   k of each source image; when the budget does not allow the whole space, a seeded subset.
2. **Successive halving as a pure state machine**: ``new_state(space)`` and ``step(state,
   results) -> (state, requests)``. The state is a JSON-able dict (candidates, rung, scores per
   candidate per rung, pending requests, finished ones); ``step`` takes finished results and
   says what to queue next. Requests: ``make`` (materialise a candidate: its selection and its
   near-copy fraction) and ``evaluate`` (an arm, epochs, seed, split). The search phase only
   ever asks for ``split="val"``; it ends in phase ``"chosen"`` (the winner and the best
   classical augmentation fixed, both on validation). The test split is asked for by
   ``start_report`` only, a different function that refuses to run before the winner is fixed.
3. **The driver** over the project's stages and jobs: ``start`` records an ``Experiment`` row
   of kind ``"recipe"`` holding the state; ``advance`` turns the state's requests into jobs
   (generate -> re-encode -> band selection + memorisation -> evaluate) and feeds finished
   jobs back, so a half-done search resumes after a restart without redoing finished work.

``search`` / ``report`` run the state machine in-process with callables instead of jobs (the
benchmark's fake scorer, tests). ``table`` / ``report_table`` give the result tables.

Costs are counted in evaluation-epochs (one epoch of one classifier training); the budget
covers the search on validation, the baselines on validation and the final report on test.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
from typing import Any, Callable

import numpy as np
import pandas as pd

from engine.config import BandConfig, EvalConfig, GenerateConfig, RecipeSpace
from engine.errors import InvalidConfigError, NotReadyError, SplitLeakError

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: baselines scored at several lengths ({arm: {epochs: top1}})
PHASES = ("materialise", "search", "chosen", "report", "done")
MIXING_FIELDS = ("syn_weight", "syn_fraction", "syn_bn", "curriculum")
REAL = "real"  # the real-only arm


# ----------------------------------------------------------------------------- the space


def band_config(name: str, keep_fraction: float = 0.5) -> BandConfig:
    """The BandConfig of a recipe band: a ``BandConfig.preset``, or "outliers" = keep every
    sample but those farther than the class's real images' 99th percentile distance."""
    if name == "outliers":
        return BandConfig(low=0.0, high=1.0, outlier="real")
    return BandConfig.preset(name, keep_fraction)


def generation_key(guidance: float, perturb: float) -> str:
    """The key of one generation of the search: its (guidance, perturbation)."""
    return f"g{float(guidance):g}-p{float(perturb):g}"


def _unique(values: tuple) -> list:
    out: list = []
    for v in values:
        v = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        if v not in out:
            out.append(v)
    return out


def all_candidates(space: RecipeSpace) -> list[dict[str, Any]]:
    """Every distinct candidate of the space, generation-major (generation key, variations,
    band, mixing), with ids ``c000``, ``c001``, ... in that order.

    Duplicates are dropped: repeated values of an axis (``1`` and ``1.0``), and bands that
    resolve to the same BandConfig (e.g. middle / nearest / farthest / all when
    ``keep_fraction`` is 1).
    """
    gens = sorted({(float(g), float(p)) for g in space.guidance for p in space.perturb})
    variations = sorted({int(v) for v in space.variations})
    bands: list[str] = []
    seen: list[dict] = []
    for name in space.bands:
        resolved = band_config(name, space.keep_fraction).to_dict()
        if resolved not in seen:
            seen.append(resolved)
            bands.append(name)
    mixings = [dict(zip(MIXING_FIELDS, combo)) for combo in itertools.product(
        _unique(space.syn_weight), _unique(space.syn_fraction), _unique(space.syn_bn),
        _unique(space.curriculum))]
    out = []
    for (g, p), k, band, mixing in itertools.product(gens, variations, bands, mixings):
        out.append({"id": f"c{len(out):03d}", "gen_key": generation_key(g, p),
                    "guidance": g, "perturb": p, "variations": k, "band": band,
                    **mixing})
    return out


def halving_cost(n: int, rungs: tuple[int, ...], eta: int) -> int:
    """Evaluation-epochs successive halving spends on ``n`` candidates: rung i trains each
    survivor for ``rungs[i]`` epochs and keeps the top ``max(1, n_i // eta)``; a lone survivor
    goes straight to the last rung."""
    if n <= 0:
        return 0
    cost, alive, i = n * rungs[0], n, 0
    while i < len(rungs) - 1:
        alive = max(1, alive // eta)
        i = len(rungs) - 1 if alive == 1 else i + 1
        cost += alive * rungs[i]
    return cost


def baseline_epochs(space: RecipeSpace) -> list[int]:
    """The lengths each baseline (real-only, each classical augmentation) trains for on
    validation: ``rungs[-1]`` x each of ``baseline_epoch_factors``, distinct, ascending."""
    return sorted({space.rungs[-1] * f for f in space.baseline_epoch_factors})


def fixed_cost(space: RecipeSpace) -> int:
    """Evaluation-epochs outside the halving: real-only and each classical augmentation on
    validation at each of ``baseline_epochs``, the winner at those beyond ``rungs[-1]``; then,
    on test over ``report_seeds`` seeds, the winner, real-only and the best classical
    augmentation at their chosen lengths (counted at the longest, the budget's worst case)."""
    lengths = baseline_epochs(space)
    baselines = 1 + len(space.classical)
    winner = sum(e for e in lengths if e != space.rungs[-1])
    report = (3 if space.classical else 2) * lengths[-1]
    return baselines * sum(lengths) + winner + space.report_seeds * report


def affordable(space: RecipeSpace, size: int) -> int:
    """How many of ``size`` candidates the budget lets the search start with.

    Raises:
        InvalidConfigError: the budget does not cover even one candidate (the message says
            how many evaluation-epochs that needs).
    """
    need = fixed_cost(space) + halving_cost(1, space.rungs, space.eta)
    if need > space.budget_epochs:
        raise InvalidConfigError(
            f"budget_epochs={space.budget_epochs} is too small: one candidate, the baselines "
            f"and the report need {need} evaluation-epochs")
    n = 1
    while n < size and fixed_cost(space) + halving_cost(n + 1, space.rungs, space.eta) \
            <= space.budget_epochs:
        n += 1
    return n


def candidates(space: RecipeSpace) -> list[dict[str, Any]]:
    """The candidates the search starts with: all of them, or, when there are more
    generations than ``max_generations`` or more candidates than the budget affords, a
    subset drawn with ``space.seed`` (first the generations, then the candidates), kept in
    generation-major order so that candidates share generations."""
    pool = all_candidates(space)
    rng = np.random.default_rng(space.seed)
    keys = sorted({c["gen_key"] for c in pool})
    if len(keys) > space.max_generations:
        chosen = set(rng.choice(keys, size=space.max_generations, replace=False).tolist())
        pool = [c for c in pool if c["gen_key"] in chosen]
    n = affordable(space, len(pool))
    if n < len(pool):
        keep = np.sort(rng.choice(len(pool), size=n, replace=False))
        pool = [pool[i] for i in keep]
    return pool


def generations_needed(cands: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{generation key: {"guidance", "perturb", "variations"}}: each generation once, at the
    largest number of variations its candidates use."""
    out: dict[str, dict[str, float]] = {}
    for c in cands:
        g = out.setdefault(c["gen_key"], {"guidance": c["guidance"], "perturb": c["perturb"],
                                          "variations": 0})
        g["variations"] = max(g["variations"], c["variations"])
    return out


# ----------------------------------------------------------------------------- the state machine


def new_state(space: RecipeSpace, cands: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A fresh search (nothing queued yet: the first ``step`` queues the ``make`` requests)."""
    cands = candidates(space) if cands is None else cands
    return {"version": STATE_VERSION, "space": space.to_dict(), "candidates": cands,
            "phase": "materialise", "started": False, "rung": 0, "alive": [],
            "scores": {}, "made": {}, "excluded": {}, "baselines": {}, "pending": {},
            "finished": {}, "winner": None, "best_classical": None, "baseline_epochs": {},
            "stop_reason": "",
            "epochs_spent": 0, "seconds_spent": 0.0, "report": {}}


def space_of(state: dict[str, Any]) -> RecipeSpace:
    space = dict(state["space"])
    space.setdefault("baseline_epoch_factors", [1])  # a version-1 state: one length
    return RecipeSpace.from_dict(space)


def _baseline_scores(state: dict[str, Any], arm: str) -> dict[int, float | None]:
    """{epochs: validation top-1} of a baseline arm (a version-1 state kept one float)."""
    got = state["baselines"].get(arm)
    if got is None or isinstance(got, dict):
        return {int(e): v for e, v in (got or {}).items()}
    return {int(state["space"]["rungs"][-1]): got}


def _best_length(state: dict[str, Any], arm: str) -> tuple[int, float | None]:
    """(epochs, validation top-1) of a baseline's best length; the shortest on ties."""
    scores = {e: v for e, v in _baseline_scores(state, arm).items() if v is not None}
    if not scores:
        return int(state["space"]["rungs"][-1]), None
    best = max(sorted(scores), key=lambda e: scores[e])
    return best, scores[best]


def _request(state: dict[str, Any], key: str, **fields: Any) -> dict[str, Any]:
    req = {"key": key, **fields}
    state["pending"][key] = req
    return req


def _search_eval(state: dict[str, Any], phase: str, arm: str, epochs: int,
                 augment: str | None = None) -> dict[str, Any]:
    """A validation evaluation of the search phase (the only split it asks for)."""
    seed = state["space"]["seed"]
    rung = state["rung"]
    key = f"{phase}/r{rung}/{arm}" if phase == "search" else f"{phase}/{arm}@{epochs}"
    return _request(state, key, kind="evaluate", phase=phase, arm=arm, epochs=int(epochs),
                    seed=int(seed), split="val", augment=augment)


def _queue_rung(state: dict[str, Any]) -> list[dict[str, Any]]:
    epochs = state["space"]["rungs"][state["rung"]]
    return [_search_eval(state, "search", cid, epochs) for cid in state["alive"]]


def _record(state: dict[str, Any], result: dict[str, Any]) -> None:
    req = state["pending"].pop(result["key"])
    error = result.get("error")
    if req["kind"] == "make":
        cid = req["candidate"]
        if error:
            state["excluded"][cid] = f"materialisation failed: {error}"
        else:
            state["made"][cid] = {"selection_id": result.get("selection_id", ""),
                                  "count": int(result.get("count", 0)),
                                  "copy_fraction": float(result.get("copy_fraction", 0.0))}
            if state["made"][cid]["count"] == 0:
                state["excluded"][cid] = "the band keeps no image"
        state["finished"][req["key"]] = {**req, "error": error}
        return
    state["epochs_spent"] += int(req["epochs"])
    state["seconds_spent"] += float(result.get("seconds", 0.0) or 0.0)
    top1 = None if error else float(result["top1"])
    if req["phase"] == "search":
        if top1 is None:
            state["excluded"][req["arm"]] = f"evaluation failed: {error}"
        else:
            state["scores"].setdefault(req["arm"], {})[str(state["rung"])] = top1
    elif req["phase"] == "baseline":
        state["baselines"].setdefault(req["arm"], {})[str(req["epochs"])] = top1
    else:
        state["report"][req["key"]] = {"arm": req["arm"], "seed": req["seed"], "top1": top1}
    state["finished"][req["key"]] = {**req, "top1": top1, "error": error}


def _pending(state: dict[str, Any], phase: str) -> bool:
    return any(r.get("phase", r["kind"]) == phase for r in state["pending"].values())


def _close_rung(state: dict[str, Any]) -> None:
    """Rank the rung's survivors; promote the top 1/eta or fix the winner."""
    space = state["space"]
    rung = state["rung"]
    order = {c["id"]: i for i, c in enumerate(state["candidates"])}
    alive = [c for c in state["alive"] if c not in state["excluded"]]
    ranked = sorted(alive, key=lambda c: (-state["scores"][c][str(rung)], order[c]))
    keep = max(1, len(ranked) // space["eta"])
    last = rung == len(space["rungs"]) - 1
    over_time = 0 < space["budget_seconds"] <= state["seconds_spent"]
    if not ranked:
        state.update(alive=[], winner=None, stop_reason="every candidate failed or was excluded")
    elif last or over_time:
        state.update(alive=ranked[:1], winner=ranked[0],
                     stop_reason="time budget spent" if over_time and not last else
                     f"best at {space['rungs'][rung]} epochs")
    else:
        state["alive"] = ranked[:keep]
        state["rung"] = len(space["rungs"]) - 1 if keep == 1 else rung + 1


def step(state: dict[str, Any], results: list[dict[str, Any]] | None = None,
         ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Advance the search with finished ``results``; return the new state and what to queue.

    Args:
        state: from ``new_state`` or a previous ``step`` (not modified).
        results: ``{"key", ...}`` per finished request: for ``make`` ``selection_id``,
            ``count``, ``copy_fraction``; for ``evaluate`` ``top1`` (and optionally
            ``seconds``); or ``error``. Results of keys that are not pending (already
            recorded, or unknown) are ignored, so feeding a result twice is harmless.

    Returns:
        ``(state, requests)``: the requests are new (also listed in ``state["pending"]``);
        search requests always have ``split == "val"``. The search is over when
        ``state["phase"]`` is ``"chosen"`` (then ``start_report``) or ``"done"``.
    """
    state = copy.deepcopy(state)
    for result in results or ():
        if result.get("key") in state["pending"]:
            _record(state, result)
    new: list[dict[str, Any]] = []
    space = space_of(state)
    # 1. materialise every candidate (selection + near-copy fraction), then exclude
    if state["phase"] == "materialise":
        if not state["started"]:
            state["started"] = True
            new += [_request(state, f"make/{c['id']}", kind="make", phase="make",
                             candidate=c["id"], gen_key=c["gen_key"])
                    for c in state["candidates"]]
        if not _pending(state, "make"):
            limit = space.max_copy_fraction
            for c in state["candidates"]:
                made = state["made"].get(c["id"])
                if limit is not None and made and c["id"] not in state["excluded"] \
                        and made["copy_fraction"] > limit:
                    state["excluded"][c["id"]] = (f"near-copy fraction "
                                                  f"{made['copy_fraction']:.3f} > {limit}")
            state["alive"] = [c["id"] for c in state["candidates"]
                              if c["id"] not in state["excluded"]]
            state["phase"] = "search"
            new += _queue_rung(state)
            for epochs in baseline_epochs(space):
                new.append(_search_eval(state, "baseline", REAL, epochs))
                new += [_search_eval(state, "baseline", a, epochs, augment=a)
                        for a in space.classical]
    # 2. successive halving on validation
    while state["phase"] == "search" and state["winner"] is None and state["alive"] \
            and not _pending(state, "search"):
        _close_rung(state)
        if state["winner"] is None and state["alive"]:
            new += _queue_rung(state)
    if state["phase"] == "search" and not state["alive"] and not state["stop_reason"]:
        state["stop_reason"] = "every candidate failed or was excluded"
    # 3. the winner, too, tries the baselines' lengths on validation (it scored rungs[-1]
    #    in the search, unless a time budget stopped it earlier)
    if state["phase"] == "search" and state["winner"] and not state.get("winner_lengths"):
        state["winner_lengths"] = True
        win, last = state["winner"], str(len(space.rungs) - 1)
        if state["scores"].get(win, {}).get(last) is not None:
            state["baselines"].setdefault(win, {})[str(space.rungs[-1])] = \
                state["scores"][win][last]
        new += [_search_eval(state, "baseline", win, e) for e in baseline_epochs(space)
                if str(e) not in state["baselines"].get(win, {})]
    # 4. the winner's length and the best classical augmentation are fixed on validation
    if state["phase"] == "search" and (state["winner"] or state["stop_reason"]) \
            and not _pending(state, "baseline") and not _pending(state, "search"):
        best = {a: _best_length(state, a) for a in state["baselines"]}
        state["baseline_epochs"] = {a: e for a, (e, _) in best.items()}
        candidates_ = {c["id"] for c in state["candidates"]}
        scored = {a: s for a, (_, s) in best.items()
                  if a != REAL and a not in candidates_ and s is not None}
        state["best_classical"] = max(sorted(scored), key=lambda a: scored[a]) if scored \
            else None
        state["phase"] = "chosen" if state["winner"] else "done"
    # 5. the report: done when its evaluations are in
    if state["phase"] == "report" and not _pending(state, "report"):
        state["phase"] = "done"
    return state, new


def start_report(state: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The final report's requests, on the TEST split: the winner, real-only and the best
    classical augmentation, each at the length it chose on validation, ``report_seeds``
    seeds each.

    Raises:
        SplitLeakError: the search is not over (no winner fixed on validation yet): nothing
            may look at the test split before.
    """
    if state["phase"] != "chosen" or not state["winner"]:
        raise SplitLeakError(f"the report reads the test split, which needs the winner fixed "
                             f"on validation first; the search is in phase {state['phase']!r}")
    state = copy.deepcopy(state)
    space = space_of(state)
    lengths = state.get("baseline_epochs", {})
    arms = [(state["winner"], None, lengths.get(state["winner"], space.rungs[-1])),
            (REAL, None, lengths.get(REAL, space.rungs[-1]))]
    if state["best_classical"]:
        arm = state["best_classical"]
        arms.append((arm, arm, lengths.get(arm, space.rungs[-1])))
    new = [_request(state, f"report/{arm}/s{space.seed + s}", kind="evaluate", phase="report",
                    arm=arm, epochs=int(epochs), seed=space.seed + s, split="test",
                    augment=augment)
           for arm, augment, epochs in arms for s in range(space.report_seeds)]
    state["phase"] = "report"
    return state, new


# ----------------------------------------------------------------------------- in-process runs


Evaluator = Callable[[dict[str, Any]], dict[str, Any]]


def search(state: dict[str, Any], make: Evaluator, evaluate_val: Evaluator) -> dict[str, Any]:
    """Run the search phase in this process: ``make(request)`` materialises a candidate,
    ``evaluate_val(request)`` trains and scores on validation; both return the result dict
    (without ``key``). Stops in phase "chosen" or "done". Never sees a test request: one
    would raise ``SplitLeakError``."""
    state, queue = step(state, [])
    queue = list(state["pending"].values())  # a resumed state: what was pending
    while queue:
        results = []
        for req in queue:
            if req["kind"] == "make":
                results.append({"key": req["key"], **make(req)})
            elif req["split"] != "val":
                raise SplitLeakError(f"the search asked for {req['split']!r}: {req['key']}")
            else:
                results.append({"key": req["key"], **evaluate_val(req)})
        state, queue = step(state, results)
    return state


def report(state: dict[str, Any], evaluate_test: Evaluator) -> dict[str, Any]:
    """Run the final report in this process (see ``start_report``)."""
    state, queue = start_report(state)
    results = [{"key": r["key"], **evaluate_test(r)} for r in queue]
    state, _ = step(state, results)
    return state


# ----------------------------------------------------------------------------- tables


def candidate_label(c: dict[str, Any]) -> str:
    mix = [] if c["syn_weight"] == 1.0 else [f"w{c['syn_weight']:g}"]
    if c["syn_fraction"] is not None:
        mix.append(f"f{c['syn_fraction']:g}")
    if c["syn_bn"] != "shared":
        mix.append("sepBN")
    if c["curriculum"] != "mixed":
        mix.append("syn->real")
    extra = f" {' '.join(mix)}" if mix else ""
    return (f"{c['variations']}x g{c['guidance']:g} λ{c['perturb']:g} "
            f"{c['band']}{extra}")


def table(state: dict[str, Any]) -> pd.DataFrame:
    """One row per candidate: its settings, validation top-1 per rung (NaN where it did not
    run), evaluation-epochs spent on it, near-copy fraction, excluded (why), winner."""
    rungs = state["space"]["rungs"]
    spent: dict[str, int] = {}
    for r in state["finished"].values():
        if r.get("phase") in ("search", "baseline"):  # baseline: the winner's lengths
            spent[r["arm"]] = spent.get(r["arm"], 0) + int(r["epochs"])
    rows = []
    for c in state["candidates"]:
        made = state["made"].get(c["id"], {})
        scores = state["scores"].get(c["id"], {})
        row = {"candidate": c["id"], "label": candidate_label(c),
               **{k: c[k] for k in ("guidance", "variations", "perturb", "band",
                                    *MIXING_FIELDS)},
               "images": made.get("count", math.nan)}
        for i, e in enumerate(rungs):
            row[f"val top-1 @{e}ep"] = scores.get(str(i), math.nan)
        row.update({"epochs": spent.get(c["id"], 0),
                    "near-copy fraction": made.get("copy_fraction", math.nan),
                    "excluded": state["excluded"].get(c["id"], ""),
                    "winner": c["id"] == state["winner"]})
        rows.append(row)
    return pd.DataFrame(rows)


def report_table(state: dict[str, Any]) -> pd.DataFrame:
    """The final comparison: winner, real only, best classical augmentation; the epochs each
    trains for (its best length on validation),
    validation top-1 (one seed, at those epochs) and test top-1 mean / std over the report
    seeds (NaN until done; std NaN with fewer than two)."""
    rows = []
    by_id = {c["id"]: c for c in state["candidates"]}
    arms = [a for a in (state["winner"], REAL, state["best_classical"]) if a]
    last = str(len(state["space"]["rungs"]) - 1)
    for arm in arms:
        if arm in by_id and arm not in state["baselines"]:  # a version-1 state
            label, val = f"real + {candidate_label(by_id[arm])}", state["scores"].get(arm, {})
            val_top1 = val.get(last, val[max(val, key=int)] if val else math.nan)
            epochs = state["space"]["rungs"][-1]
        elif arm in by_id:
            label = f"real + {candidate_label(by_id[arm])}"
            epochs, val_top1 = _best_length(state, arm)
        else:
            label = "real only" if arm == REAL else f"real + {arm}"
            epochs, val_top1 = _best_length(state, arm)
        tops = [r["top1"] for r in state["report"].values()
                if r["arm"] == arm and r["top1"] is not None]
        rows.append({"arm": arm, "training data": label, "epochs": int(epochs),
                     "val top-1": math.nan if val_top1 is None else val_top1,
                     "seeds": len(tops),
                     "test top-1 mean": float(np.mean(tops)) if tops else math.nan,
                     "test top-1 std": float(np.std(tops, ddof=1)) if len(tops) >= 2
                     else math.nan})
    return pd.DataFrame(rows, columns=["arm", "training data", "epochs", "val top-1", "seeds",
                                       "test top-1 mean", "test top-1 std"])


def verdict(state: dict[str, Any]) -> dict[str, Any] | None:
    """What validation says once the winner is fixed (None before): does the best synthetic
    set beat both real only and the best classical augmentation?

    Returns:
        ``{"helps": bool, "use": arm, "label": its training data, "val": {arm: top-1}}``:
        ``use`` is the arm with the best validation top-1 at its chosen length, real only
        first and the classical augmentation second on ties (synthetic data has to win
        outright to be recommended); ``helps`` is ``use == winner``. Decided on validation
        only, so it is known before the report reads the test split.
    """
    win = state.get("winner")
    if not win or state["phase"] not in ("chosen", "report", "done"):
        return None
    last = str(len(state["space"]["rungs"]) - 1)
    val: dict[str, float] = {}
    for arm in (REAL, state.get("best_classical"), win):
        if not arm:
            continue
        score = _best_length(state, arm)[1]
        if score is None and arm == win:  # a version-1 state: the winner's last rung
            score = state["scores"].get(win, {}).get(last)
        if score is not None:
            val[arm] = float(score)
    if not val:
        return None
    use = max(val, key=lambda a: val[a])  # dicts keep order: real, classical, winner on ties
    by_id = {c["id"]: c for c in state["candidates"]}
    label = f"real + {candidate_label(by_id[use])}" if use in by_id else \
        ("real only" if use == REAL else f"real + {use}")
    return {"helps": use == win, "use": use, "label": label, "val": val}


def verdict_text(state: dict[str, Any]) -> str:
    """One sentence of the verdict ("" before the winner is fixed)."""
    v = verdict(state)
    if v is None:
        return ""
    win = state["winner"]
    if v["helps"]:
        others = ", ".join(f"{'real only' if a == REAL else a} {s:.2f}"
                           for a, s in v["val"].items() if a != win)
        return (f"on validation the synthetic set helps: {v['val'][win]:.2f} top-1 against "
                f"{others}: use {v['label']}")
    return (f"on validation the best synthetic set ({v['val'].get(win, math.nan):.2f}) does "
            f"not beat {v['label']} ({v['val'][v['use']]:.2f}): at this size, use "
            f"{v['label']}")


def winner_selection(state: dict[str, Any]) -> str | None:
    """The id of the winner's synthetic set (a ``Selection`` the search saved: its band over
    the first k variations), for "save as selection" / export; None before the winner."""
    win = state.get("winner")
    return state["made"].get(win, {}).get("selection_id") or None if win else None


def queued_epochs(state: dict[str, Any]) -> int:
    """Evaluation-epochs of every evaluation ever queued (finished or pending)."""
    return sum(int(r["epochs"]) for r in (*state["finished"].values(),
                                          *state["pending"].values())
               if r["kind"] == "evaluate")


# ----------------------------------------------------------------------------- adapters


def eval_config_for(base: EvalConfig, request: dict[str, Any],
                    candidate: dict[str, Any] | None) -> EvalConfig:
    """The EvalConfig of one evaluation request: the base recipe at the request's epochs and
    seed, its augmentation (baselines), and the candidate's mixing options (``syn_weight``,
    ``syn_fraction``, ``syn_bn``, ``curriculum``: how synthetic images join training)."""
    changes: dict[str, Any] = {"epochs": int(request["epochs"]), "seed": int(request["seed"])}
    if request.get("augment"):
        changes["augment"] = request["augment"]
    if candidate is not None:
        changes.update({name: candidate[name] for name in MIXING_FIELDS})
    return base.replace(**changes)


def generate_config_for(base: GenerateConfig, guidance: float, variations: int,
                        perturb: float) -> GenerateConfig:
    """The GenerateConfig of one generation of the search: variations of the training
    images at this guidance and perturbation strength lambda (``GenerateConfig.perturb``)."""
    return base.replace(mode="variations", guidance=float(guidance),
                        variations=int(variations), perturb=float(perturb))


def prepare_evaluation(project: Any, config: EvalConfig, dataset_id: str, mix: str,
                       selection_id: str | None, split: str, name: str) -> Any:
    """``evaluate_stage.prepare`` scored on ``split`` (``"val"`` for the search, ``"test"``
    for the report); the Evaluation row records the split (``eval_split``).

    Raises:
        NotReadyError: ``split="val"`` on a dataset imported without a validation split
            (``rcdm-studio import --val-fraction F``).
    """
    from engine.stages import evaluate_stage

    return evaluate_stage.prepare(project, config, mix=mix, dataset_ref=dataset_id,
                                  selection_ref=selection_id, name=name, split=split)


# ----------------------------------------------------------------------------- the driver


def start(project: Any, space: RecipeSpace, eval_config: EvalConfig,
          generate_config: GenerateConfig | None = None, dataset_ref: str | None = None,
          model_ref: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Record a new recipe search as an ``Experiment`` row (kind "recipe"); nothing is queued
    until ``advance``.

    Args:
        eval_config: the base recipe of every evaluation (its epochs and seed are the
            search's; its augmentation is the real-only base).
        generate_config: the base of every generation the search needs (sampler, steps, ...).
        model_ref: the RCDM that generates; None: only existing generations of the dataset
            (matching guidance and perturbation, with enough variations) can be used.

    Returns:
        The experiment's record (``engine.experiments.record_of``).
    """
    from engine import experiments
    from engine.project import Experiment, dumps, free_name, new_id
    from engine.stages import common

    model_id = common.trained_model(project, model_ref).id if model_ref else ""
    if model_ref:
        from engine.project import Model

        dataset_ref = dataset_ref or project.get(Model, model_id).dataset_id
    ds = common.dataset(project, dataset_ref)
    if not ds.num_val:  # refused before anything is recorded: the search chooses on val
        raise NotReadyError(f"dataset {ds.name} has no validation split; the recipe search "
                            f"makes its choices on one: import it again with a validation "
                            f"fraction (--val-fraction, or the Data tab's Splits)")
    state = new_state(space)
    exp_id = new_id("exp")
    name = free_name({r["name"] for r in experiments.list_experiments(project)},
                                 name or "recipe")
    config = {"recipe": eval_config.to_dict(),
              "generate": (generate_config or GenerateConfig()).to_dict(),
              "model_id": model_id, "generations": [], "seeds": space.report_seeds,
              "options": {}, "runs": [], "jobs": {}, "state": state}
    project.add(Experiment(id=exp_id, name=name, kind="recipe", dataset_id=ds.id,
                           status="queued", config_json=dumps(config), members_json="[]"))
    return experiments.record_of(project.get(Experiment, exp_id))


def load(project: Any, ref: str) -> tuple[Any, dict[str, Any]]:
    """(Experiment row, its state) of a recipe search by id or name."""
    from engine import experiments
    from engine.project import Experiment

    record = experiments.get(project, ref)
    if record["kind"] != "recipe":
        raise InvalidConfigError(f"experiment {record['name']} is a {record['kind']} "
                                 f"experiment, not a recipe search")
    row = project.get(Experiment, record["id"])
    return row, row.config["state"]


def _job_status(project: Any, job_id: str) -> str:
    from engine.errors import NotFoundError
    from engine.project import Job

    try:
        return project.get(Job, job_id).status
    except NotFoundError:
        return "missing"


def _find_generation(project: Any, dataset_id: str, model_id: str, want: dict[str, float]):
    """An existing generation of the dataset (and model, when given) with the guidance and
    perturbation wanted and at least the variations wanted; the latest, re-encoded first."""
    from engine.project import Encoding, Generation

    found = []
    for gen in project.list(Generation, dataset_id=dataset_id):
        cfg = gen.config
        if model_id and gen.model_id != model_id:
            continue
        if cfg.get("mode", "variations") != "variations" or gen.variations < want["variations"]:
            continue
        if float(cfg.get("guidance", 1.0)) != want["guidance"] or \
                float(cfg.get("perturb", 0.0)) != want["perturb"]:
            continue
        encoded = bool(project.list(Encoding, target="generation", target_id=gen.id))
        found.append((encoded, gen))
    found.sort(key=lambda t: t[0])
    return found[-1][1] if found else None


def _ensure_generation(project: Any, cfg: dict[str, Any], key: str, want: dict[str, float],
                       dataset_id: str, submit: Callable) -> str | None:
    """The id of the re-encoded generation of ``key``, or None while its jobs run (this
    queues them: generate, then re-encode). Progress is kept in ``cfg["jobs"][key]``."""
    from engine.config import EncodeConfig
    from engine.errors import JobError
    from engine.project import Encoding, Generation
    from engine.stages import encode_stage, generate_stage

    entry = cfg["jobs"].setdefault(key, {})
    for stage in ("generate_job", "encode_job"):
        if entry.get(stage) and _job_status(project, entry[stage]) in \
                ("failed", "cancelled", "missing"):
            raise JobError(f"the recipe's {stage.split('_')[0]} job {entry[stage]} for "
                           f"{key} did not finish; retry it, then advance the search")
    if not entry.get("generation_id"):
        gen = _find_generation(project, dataset_id, cfg["model_id"], want)
        if gen is not None:
            entry["generation_id"] = gen.id
        elif not entry.get("generate_job"):
            if not cfg["model_id"]:
                raise NotReadyError(f"no generation with guidance {want['guidance']:g}, "
                                    f"perturbation {want['perturb']:g} and "
                                    f"{want['variations']} variations, and no model to make it")
            gconf = generate_config_for(GenerateConfig.from_dict(cfg["generate"]),
                                        want["guidance"], int(want["variations"]),
                                        want["perturb"])
            spec = generate_stage.prepare(project, gconf, model_ref=cfg["model_id"],
                                          name=f"recipe-{key}")
            entry["pending_generation"] = spec.params["generation_id"]
            entry["generate_job"] = submit(spec).id
        if not entry.get("generation_id") and entry.get("pending_generation"):
            if not project.list(Generation, id=entry["pending_generation"]):
                return None
            entry["generation_id"] = entry["pending_generation"]
    gen_id = entry["generation_id"]
    if project.list(Encoding, target="generation", target_id=gen_id):
        return gen_id
    if not entry.get("encode_job"):
        gen = project.get(Generation, gen_id)
        spec = encode_stage.prepare(project, EncodeConfig(encoder=gen.encoder),
                                    generation_ref=gen_id)
        entry["encode_job"] = submit(spec).id
        if project.list(Encoding, target="generation", target_id=gen_id):
            return gen_id  # an inline submit finished it
    return None


def materialise(project: Any, candidate: dict[str, Any], generation_id: str,
                space: RecipeSpace) -> dict[str, Any]:
    """A candidate's synthetic set: its band over the first ``variations`` of each source
    image, saved as a selection (reused if saved), and its near-copy fraction.

    Returns:
        ``{"selection_id", "count", "copy_fraction"}``.
    """
    from engine import curation
    from engine.project import Generation, Selection, dumps
    from engine.stages import curate_stage

    gen = project.get(Generation, generation_id)
    band = band_config(candidate["band"], space.keep_fraction)
    bd = curate_stage.band_data(project, gen.id, centroid=band.centroid, metric=band.metric)
    idx = project.samples(gen.id)["idx"].to_numpy(np.int64)
    first = np.flatnonzero(idx % gen.variations < candidate["variations"])
    kept = curation.band_mask(bd.distances[first], bd.labels[first], band,
                              len(bd.class_names), class_names=bd.class_names,
                              real_distances=bd.real_distances, real_labels=bd.real_labels)
    mask = np.zeros(len(idx), dtype=bool)
    mask[first[kept]] = True
    real = np.asarray(project.embeddings(bd.real_encoding)[bd.train_idx], dtype=np.float32)
    if not mask.any():
        return {"selection_id": "", "count": 0, "copy_fraction": 0.0}
    fake = np.asarray(project.embeddings(bd.encoding), dtype=np.float32)[mask]
    copies = curation.memorisation(fake, real, space.copy_factor)["copy"].to_numpy()
    how = json.loads(dumps({"kind": "recipe_band", "k": candidate["variations"],
                            "band": band.to_dict(), "encoder": bd.encoding.encoder}))
    sel = next((s for s in project.list(Selection, generation_id=gen.id) if s.config == how),
               None)
    if sel is None:
        sel = curate_stage.save_selection(
            project, bd, band, mask=mask,
            name=f"{gen.name}-{candidate['variations']}x-{candidate['band']}")
        sel = project.update(Selection, sel.id, config_json=dumps(how))
    return {"selection_id": sel.id, "count": int(mask.sum()),
            "copy_fraction": float(copies.mean())}


def _evaluation_result(project: Any, member: dict[str, Any]) -> dict[str, Any] | None:
    """A finished evaluation's result for ``step``; None while it is queued or running (or
    interrupted: a retry of its job finishes it)."""
    from engine.project import Evaluation, Job

    e = project.get(Evaluation, member["evaluation_id"])
    if e.status == "done":
        seconds = 0.0
        if member.get("job_id"):
            job = project.get(Job, member["job_id"])
            if job.started_at and job.finished_at:
                seconds = (job.finished_at - job.started_at).total_seconds()
        return {"key": member["key"], "top1": e.top1, "seconds": seconds}
    if e.status in ("failed", "cancelled"):
        return {"key": member["key"], "error": f"evaluation {e.name} {e.status}"}
    return None


def _submit_evaluation(project: Any, row: Any, cfg: dict[str, Any],
                       members: list[dict[str, Any]], req: dict[str, Any],
                       submit: Callable) -> None:
    from engine.project import Evaluation, Experiment, dumps

    state = cfg["state"]
    by_id = {c["id"]: c for c in state["candidates"]}
    cand = by_id.get(req["arm"])
    config = eval_config_for(EvalConfig.from_dict(cfg["recipe"]), req, cand)
    mix, sel = ("real+synthetic", state["made"][cand["id"]]["selection_id"]) if cand \
        else ("real", None)
    spec = prepare_evaluation(project, config, row.dataset_id, mix, sel, req["split"],
                              name=f"{row.name}/{req['key']}")
    cfg["runs"].append({"label": req["key"], "series": req["phase"], "x": 0.0, "mix": mix,
                        "selection_id": sel, "augment": config.augment})
    member = {"evaluation_id": spec.params["evaluation_id"], "job_id": "",
              "run": len(cfg["runs"]) - 1, "seed": req["seed"], "key": req["key"]}
    members.append(member)
    project.update(Experiment, row.id, config_json=dumps(cfg), members_json=dumps(members))
    job = submit(spec)
    member["job_id"] = job.id
    project.update(Evaluation, member["evaluation_id"], job_id=job.id)
    project.update(Experiment, row.id, members_json=dumps(members))


def advance(project: Any, ref: str, submit: Callable, report: bool = True) -> dict[str, Any]:
    """Feed the search's finished jobs back into its state and queue what comes next.

    Call it whenever a job of the search finishes (the studio's poll, the CLI's loop); with
    ``submit=JobManager.run_inline`` one call runs the whole search. Safe to call again after
    a restart: finished evaluations are read back from their rows, pending ones are waited
    for, nothing finished is queued twice.

    Args:
        submit: queues or runs one JobSpec and returns its Job row.
        report: start the final report on test automatically once the winner is fixed.

    Returns:
        The experiment's record; its state is ``load(project, ref)[1]``.
    """
    from engine import experiments
    from engine.project import Experiment, dumps, utcnow

    row, _ = load(project, ref)
    cfg, members = row.config, row.members
    space = space_of(cfg["state"])
    for _ in range(10_000):  # until nothing changes (inline submits finish at once)
        state = cfg["state"]
        results: list[dict[str, Any]] = []
        # 1. candidates to materialise, generation by generation
        by_id = {c["id"]: c for c in state["candidates"]}
        makes = [r for r in state["pending"].values() if r["kind"] == "make"]
        needed = generations_needed([by_id[r["candidate"]] for r in makes])
        for key, want in needed.items():
            gen_id = _ensure_generation(project, cfg, key, want, row.dataset_id, submit)
            if gen_id is None:
                continue
            for r in makes:
                if r["gen_key"] == key:
                    results.append({"key": r["key"],
                                    **materialise(project, by_id[r["candidate"]], gen_id,
                                                  space)})
        # 2. finished evaluations
        known = {m["key"]: m for m in members}
        for key, req in state["pending"].items():
            if req["kind"] == "evaluate" and key in known:
                res = _evaluation_result(project, known[key])
                if res is not None:
                    results.append(res)
        state, new = step(state, results)
        if state["phase"] == "chosen" and report:
            state, new = start_report(state)
        cfg["state"] = state
        project.update(Experiment, row.id, config_json=dumps(cfg))
        # 3. queue the evaluations not submitted yet (new ones, or lost in a crash)
        known = {m["key"] for m in members}
        todo = [r for k, r in state["pending"].items()
                if r["kind"] == "evaluate" and k not in known]
        for req in todo:
            _submit_evaluation(project, row, cfg, members, req, submit)
        if not results and not todo and not new:
            break
    status = {"materialise": "running", "search": "running", "chosen": "running",
              "report": "running", "done": "done"}[cfg["state"]["phase"]]
    values: dict[str, Any] = {"status": status}
    if status == "done":
        t = report_table(cfg["state"]).astype(object)
        values.update(results_json=dumps(t.where(t.notna(), None).to_dict("records")),
                      finished_at=utcnow())
    project.update(Experiment, row.id, **values)
    return experiments.record_of(project.get(Experiment, row.id))


def results(project: Any, ref: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(candidate table, report table) of a recipe search (see ``table``, ``report_table``)."""
    _, state = load(project, ref)
    return table(state), report_table(state)
