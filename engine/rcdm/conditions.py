"""The conditioning space: which representations a generation samples from.

An RCDM turns any representation into images, so a generation is a list of K
representations (a ``ConditionPlan``) times ``variations`` seeds each. The plan is built
here, from the representations of a pool of real images, in one of four modes:

* ``variations``: the pool's own representations (the paper's setting);
* ``interpolate``: ``points`` representations on the path between two images (spherical
  for L2-normalised representations, straight otherwise), both ends included;
* ``mixup``: per class, ``per_class`` mixes ``(1 - w) * a + w * b`` of random pairs of the
  class's images, ``w ~ Beta(alpha, alpha)`` (alpha = 1: uniform);
* ``class_sample``: per class, ``per_class`` new representations drawn from a Gaussian with
  the class mean and a shrunk covariance (Ledoit-Wolf, or the diagonal plus eps), to
  generate beyond the real set.

and a fifth that moves representations instead of sampling them:

* ``edit``: each pool representation moved along a direction, ``r + λ d`` for each λ of
  the sweep, ``d = mean(B) - mean(A)`` of two groups of representations (two classes of
  the dataset's training split; ``class_direction``), optionally of unit length. λ = 0
  gives the source representation bit for bit; a normalised pool gives normalised edits.

Sources outside the dataset (an uploaded image) get a class from ``nearest_centroid``.

Everything random is seeded per class (``np.random.default_rng([seed, label])``), so a
class's plan does not depend on which other classes are in the pool. Normalised pools give
normalised plans.

Any plan can be **perturbed** (``GenerateConfig.perturb`` = λ > 0): sample ``i`` is then
drawn from ``c_j + λ · σ ⊙ ε_i`` instead of its plan representation ``c_j``, where

* σ (D,) is the *representation's scale*: the per-dimension standard deviation of the
  dataset's training encodings (``representation_scale``), so λ = 1 moves each coordinate
  by about one spread of the real data along it, whatever the encoder's units;
* ε_i ~ N(0, I_D) is drawn from ``np.random.default_rng([PERTURB_STREAM, seed_i])`` with
  ``seed_i`` the sample's own seed (the one that draws its diffusion noise, in another
  generator), so (model, plan representation, seed, λ, σ) reproduces the perturbed
  representation and the image, whatever the batch or shard;
* an L2-normalised pool gives normalised perturbed representations (the noise is added,
  then the sum is normalised).

The perturbation happens before sampling, so classifier-free guidance conditions on the
perturbed representation (the null pass is the learned null embedding, as always). λ = 0
leaves the plan's representations untouched, bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from engine.config import GenerateConfig
from engine.errors import DatasetError, InvalidConfigError

log = logging.getLogger(__name__)

UNIT_NORM_TOL = 1e-3
# keys the perturbation noise's generator apart from anything else seeded with a sample's seed
PERTURB_STREAM = 0x7065727475  # b"pertu"
_PERTURB_CHUNK = 4096  # samples whose perturbed representations are held at once


@dataclass(frozen=True)
class ConditionPlan:
    """K representations to generate from, and where each one came from.

    Attributes:
        mode: the GenerateConfig mode that made the plan.
        cond: (K, D) float32 representations.
        labels: (K,) int64 class index of each.
        source_ids: K image ids: the source (variations), the first end (interpolate),
            the first of the pair (mixup); "" for class samples.
        partner_ids: K image ids of the second image ("" when there is none).
        weights: (K,) float64 weight of the partner: t on the path (interpolate), w
            (mixup); 0 otherwise.
        perturb: λ, the perturbation strength (0: the samples are drawn from ``cond``).
        scale: (D,) float64 σ, the representation's scale the noise is relative to
            (``representation_scale``); needed when ``perturb > 0``.
        unit: whether perturbed representations are L2-normalised (a normalised pool).
    """

    mode: str
    cond: np.ndarray
    labels: np.ndarray
    source_ids: list[str]
    partner_ids: list[str]
    weights: np.ndarray
    perturb: float = 0.0
    scale: np.ndarray | None = None
    unit: bool = False

    def __post_init__(self) -> None:
        k = len(self.cond)
        if self.cond.ndim != 2:
            raise InvalidConfigError(f"cond must be (K, D), got shape {self.cond.shape}")
        if not (len(self.labels) == len(self.source_ids) == len(self.partner_ids)
                == len(self.weights) == k):
            raise InvalidConfigError(
                f"a plan of {k} representations needs {k} labels, source ids, partner ids "
                f"and weights; got {len(self.labels)}, {len(self.source_ids)}, "
                f"{len(self.partner_ids)}, {len(self.weights)}")
        if not (np.isfinite(self.perturb) and self.perturb >= 0):
            raise InvalidConfigError(f"perturb must be >= 0, got {self.perturb!r}")
        if self.perturb > 0:
            scale = None if self.scale is None else np.asarray(self.scale, dtype=np.float64)
            if scale is None or scale.shape != (self.cond.shape[1],):
                raise InvalidConfigError(
                    f"a perturbed plan needs the representation's scale, shape "
                    f"({self.cond.shape[1]},); got "
                    f"{None if scale is None else scale.shape}")
            if not (np.all(np.isfinite(scale)) and np.all(scale >= 0)):
                raise InvalidConfigError("the representation's scale must be finite and "
                                         ">= 0 in every dimension")
            object.__setattr__(self, "scale", scale)

    def __len__(self) -> int:
        return len(self.cond)

    def sample_conditions(self, cond_index: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """(n,) plan rows and (n,) sample seeds -> (n, D) float32: the representations the
        samples are drawn from. Without perturbation, ``cond[cond_index]`` itself."""
        base = self.cond[np.asarray(cond_index, dtype=np.int64)]
        if self.perturb == 0:
            return base
        return perturb(base, seeds, self.scale, self.perturb, self.unit)

    def perturbation_distances(self, cond_index: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """(n,) float64 L2 distance between each sample's plan representation and the
        perturbed one it is drawn from (0 without perturbation); computed in chunks."""
        cond_index = np.asarray(cond_index, dtype=np.int64)
        seeds = np.asarray(seeds).astype(np.int64).reshape(-1)
        out = np.zeros(len(cond_index), dtype=np.float64)
        if self.perturb == 0:
            return out
        for start in range(0, len(out), _PERTURB_CHUNK):
            part = slice(start, start + _PERTURB_CHUNK)
            base = self.cond[cond_index[part]].astype(np.float64)
            moved = self.sample_conditions(cond_index[part], seeds[part]).astype(np.float64)
            out[part] = np.linalg.norm(moved - base, axis=1)
        return out


def is_unit_norm(x: np.ndarray, tol: float = UNIT_NORM_TOL) -> bool:
    """True when every row of (N, D) ``x`` has L2 norm 1 within ``tol``."""
    norms = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
    return bool(len(norms)) and bool(np.all(np.abs(norms - 1.0) <= tol))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(D,), (D,), (P,) -> (P, D): ``(1 - t) * a + t * b``."""
    t = np.asarray(t, dtype=np.float64).reshape(-1, 1)
    return (1.0 - t) * np.asarray(a, np.float64) + t * np.asarray(b, np.float64)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(D,), (D,), (P,) -> (P, D) unit vectors on the great circle from a to b.

    ``a`` and ``b`` are normalised first; (nearly) parallel ends fall back to a normalised
    lerp. Antipodal ends have no unique great circle: the lerp's normalisation then
    passes through whatever direction rounding gives, so avoid them.
    """
    a, b = _unit(np.asarray(a, np.float64)), _unit(np.asarray(b, np.float64))
    t = np.asarray(t, dtype=np.float64).reshape(-1, 1)
    omega = np.arccos(np.clip(float(a @ b), -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return _unit(lerp(a, b, t))
    out = (np.sin((1.0 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    return _unit(out)


def representation_scale(x: np.ndarray) -> np.ndarray:
    """(N, D) encodings (the dataset's training split) -> (D,) float64 per-dimension standard
    deviation: σ, the scale perturbation noise is relative to.

    Raises:
        DatasetError: fewer than two encodings, or no spread at all (every dimension
            constant): the noise would have no scale.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise DatasetError(f"the representation's scale needs at least two (N, D) encodings, "
                           f"got shape {x.shape}")
    scale = x.std(axis=0)
    if not np.any(scale > 0):
        raise DatasetError(f"the {len(x)} encodings are all equal: the representation has no "
                           f"scale to perturb it by")
    return scale


def perturbation_noise(seeds: np.ndarray, dim: int) -> np.ndarray:
    """(n,) sample seeds -> (n, D) float64 ε ~ N(0, I), row i from
    ``np.random.default_rng([PERTURB_STREAM, seeds[i] mod 2**64])``."""
    seeds = np.asarray(seeds).astype(np.int64).reshape(-1)
    out = np.empty((len(seeds), int(dim)), dtype=np.float64)
    for i, s in enumerate(seeds):
        out[i] = np.random.default_rng([PERTURB_STREAM, int(s) % 2**64]).standard_normal(dim)
    return out


def perturb(cond: np.ndarray, seeds: np.ndarray, scale: np.ndarray, strength: float,
            unit: bool = False) -> np.ndarray:
    """Perturbed representations: (n, D) ``cond`` + strength · (D,) ``scale`` ⊙ ε(seed).

    Args:
        cond: (n, D) representations, one per sample.
        seeds: (n,) the samples' seeds (``perturbation_noise``).
        scale: (D,) σ (``representation_scale``).
        strength: λ >= 0; 0 returns ``cond`` unchanged (float32).
        unit: L2-normalise the results (for a normalised pool).

    Returns:
        (n, D) float32.
    """
    cond = np.asarray(cond, dtype=np.float32)
    if strength == 0:
        return cond
    scale = np.asarray(scale, dtype=np.float64).reshape(1, -1)  # (1, D)
    eps = perturbation_noise(seeds, cond.shape[1])  # (n, D)
    if len(eps) != len(cond):
        raise InvalidConfigError(f"got {len(eps)} seeds for {len(cond)} representations")
    moved = cond.astype(np.float64) + float(strength) * scale * eps  # (n, D)
    return (_unit(moved) if unit else moved).astype(np.float32)


def with_perturbation(plan: ConditionPlan, strength: float, scale: np.ndarray
                      ) -> ConditionPlan:
    """``plan`` perturbed by λ = ``strength`` relative to (D,) ``scale``; normalised plans
    stay normalised. λ = 0 returns ``plan`` itself."""
    if strength == 0:
        return plan
    return dataclasses.replace(plan, perturb=float(strength),
                               scale=np.asarray(scale, dtype=np.float64),
                               unit=is_unit_norm(plan.cond))


def _pool(cond: np.ndarray, ids: list[str], labels: np.ndarray
          ) -> tuple[np.ndarray, list[str], np.ndarray]:
    cond = np.asarray(cond, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if cond.ndim != 2:
        raise InvalidConfigError(f"representations must be (M, D), got shape {cond.shape}")
    if not (len(cond) == len(ids) == len(labels)):
        raise DatasetError(f"got {len(cond)} representations, {len(ids)} image ids and "
                           f"{len(labels)} labels; they must match")
    if len(cond) == 0:
        raise DatasetError("the pool of real images is empty")
    return cond, [str(i) for i in ids], labels


def variations_plan(cond: np.ndarray, ids: list[str], labels: np.ndarray) -> ConditionPlan:
    """Each pool image's own representation: (M, D) -> a plan of M."""
    cond, ids, labels = _pool(cond, ids, labels)
    m = len(cond)
    return ConditionPlan("variations", cond, labels, ids, [""] * m, np.zeros(m))


def interpolation_plan(cond: np.ndarray, ids: list[str], labels: np.ndarray,
                       points: int) -> ConditionPlan:
    """``points`` representations from image 0 to image 1 of a pool of exactly two.

    t = linspace(0, 1, points); slerp when both ends are unit vectors, lerp otherwise.
    Each point takes the class of its nearer end (t <= 0.5: the first image's).
    """
    cond, ids, labels = _pool(cond, ids, labels)
    if len(cond) != 2:
        raise InvalidConfigError(f"interpolation needs exactly two source images, got "
                                 f"{len(cond)}")
    if points < 2:
        raise InvalidConfigError(f"points must be >= 2, got {points}")
    t = np.linspace(0.0, 1.0, points)
    path = slerp(cond[0], cond[1], t) if is_unit_norm(cond) else lerp(cond[0], cond[1], t)
    lab = np.where(t <= 0.5, labels[0], labels[1]).astype(np.int64)
    return ConditionPlan("interpolate", path.astype(np.float32), lab, [ids[0]] * points,
                         [ids[1]] * points, t)


def _by_class(labels: np.ndarray, need: int, mode: str) -> dict[int, np.ndarray]:
    groups = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    small = {c: len(g) for c, g in groups.items() if len(g) < need}
    if small:
        raise DatasetError(f"{mode} needs at least {need} images per class in the pool; "
                           f"class(es) {sorted(small)} have {sorted(set(small.values()))}")
    return groups


def mixup_plan(cond: np.ndarray, ids: list[str], labels: np.ndarray, per_class: int,
               alpha: float, seed: int) -> ConditionPlan:
    """Per class, ``per_class`` mixes of random pairs (i != j) of the class's images.

    The mix is ``(1 - w) * a + w * b`` with ``w ~ Beta(alpha, alpha)``, or its spherical
    version when the pool is L2-normalised. Classes come in label order.
    """
    cond, ids, labels = _pool(cond, ids, labels)
    mix = slerp if is_unit_norm(cond) else lerp
    out, lab, src, partner, weights = [], [], [], [], []
    for c, members in _by_class(labels, 2, "mixup").items():
        rng = np.random.default_rng([seed, c])
        first = rng.choice(members, size=per_class)
        # the partner: any other member of the class (offset in 1..n-1, so never itself)
        pos = np.searchsorted(members, first)
        offset = rng.integers(1, len(members), size=per_class)
        second = members[(pos + offset) % len(members)]
        w = rng.beta(alpha, alpha, size=per_class)
        for i, j, wk in zip(first, second, w):
            out.append(mix(cond[i], cond[j], np.array([wk]))[0])
            src.append(ids[i])
            partner.append(ids[j])
        lab.extend([c] * per_class)
        weights.extend(w.tolist())
    return ConditionPlan("mixup", np.asarray(out, np.float32), np.asarray(lab, np.int64),
                         src, partner, np.asarray(weights, np.float64))


def group_direction(a: np.ndarray, b: np.ndarray, normalise: bool = False) -> np.ndarray:
    """(Na, D), (Nb, D) -> (D,) float64 ``mean(b) - mean(a)``, scaled to unit L2 length
    with ``normalise``.

    Raises:
        DatasetError: an empty group, or a zero direction to normalise.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or len(a) == 0 or len(b) == 0 or a.shape[1] != b.shape[1]:
        raise DatasetError(f"a direction needs two non-empty (N, D) groups of the same D, got "
                           f"shapes {a.shape} and {b.shape}")
    d = b.mean(axis=0) - a.mean(axis=0)
    if normalise:
        norm = float(np.linalg.norm(d))
        if norm == 0:
            raise DatasetError("the two groups have the same mean: the direction has no "
                               "length to normalise")
        d = d / norm
    return d


def class_direction(cond: np.ndarray, labels: np.ndarray, a: int, b: int,
                    normalise: bool = False) -> np.ndarray:
    """(N, D) representations with (N,) labels -> (D,) float64 direction from class ``a``'s
    mean to class ``b``'s (``group_direction``)."""
    labels = np.asarray(labels).reshape(-1)
    cond = np.asarray(cond)
    return group_direction(cond[labels == a], cond[labels == b], normalise)


def edit(cond: np.ndarray, direction: np.ndarray, strength: float,
         unit: bool = False) -> np.ndarray:
    """(n, D) representations moved by λ = ``strength`` along (D,) ``direction``:
    ``r + λ d`` (float64 sum, float32 result), L2-normalised when ``unit``. λ = 0 returns
    ``cond`` as float32 unchanged (not renormalised)."""
    cond = np.asarray(cond, dtype=np.float32)
    d = np.asarray(direction, dtype=np.float64).reshape(1, -1)  # (1, D)
    if d.shape[1] != cond.shape[1]:
        raise InvalidConfigError(f"the direction has D={d.shape[1]}, the representations "
                                 f"D={cond.shape[1]}")
    if strength == 0:
        return cond
    moved = cond.astype(np.float64) + float(strength) * d  # (n, D)
    return (_unit(moved) if unit else moved).astype(np.float32)


def edit_plan(cond: np.ndarray, ids: list[str], labels: np.ndarray, direction: np.ndarray,
              strengths: tuple[float, ...] | list[float]) -> ConditionPlan:
    """Each pool representation edited with each λ of ``strengths``: (M, D) -> a plan of
    M * S, source-major (source i, λ_s is row ``i * S + s``). The weight column holds λ;
    labels stay the sources'."""
    cond, ids, labels = _pool(cond, ids, labels)
    lam = np.asarray(strengths, dtype=np.float64).reshape(-1)  # (S,)
    if len(lam) == 0:
        raise InvalidConfigError("an edit needs at least one strength")
    unit = is_unit_norm(cond)
    out = np.stack([edit(cond, direction, float(v), unit) for v in lam], axis=1)  # (M, S, D)
    s = len(lam)
    return ConditionPlan("edit", out.reshape(-1, cond.shape[1]), np.repeat(labels, s),
                         [i for i in ids for _ in range(s)], [""] * (len(ids) * s),
                         np.tile(lam, len(ids)))


def nearest_centroid(x: np.ndarray, cond: np.ndarray, labels: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The class of each of (n, D) ``x`` by its nearest class centroid (Euclidean) of
    (N, D) ``cond`` labelled (N,) ``labels``: ((n,) int64 labels, (n,) float64 distances)."""
    x = np.asarray(x, dtype=np.float64)
    cond, _, labels = _pool(cond, [""] * len(cond), labels)
    classes = np.unique(labels)
    centroids = np.stack([cond[labels == c].astype(np.float64).mean(axis=0)
                          for c in classes])  # (C, D)
    dist = np.linalg.norm(x[:, None, :] - centroids[None, :, :], axis=2)  # (n, C)
    best = dist.argmin(axis=1)
    return classes[best].astype(np.int64), dist[np.arange(len(x)), best]


def class_gaussian(x: np.ndarray, covariance: str = "ledoit_wolf",
                   eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) samples of one class -> (mean (D,), covariance (D, D)), float64.

    "ledoit_wolf": sklearn's Ledoit-Wolf shrinkage towards a scaled identity;
    "diagonal": the per-dimension variances. Both get ``eps`` times the mean variance
    added to the diagonal, so that the covariance stays positive definite.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    if covariance == "ledoit_wolf":
        from sklearn.covariance import ledoit_wolf

        cov, _ = ledoit_wolf(x)
    elif covariance == "diagonal":
        cov = np.diag(x.var(axis=0))
    else:
        raise InvalidConfigError(f"covariance must be 'ledoit_wolf' or 'diagonal', got "
                                 f"{covariance!r}")
    scale = max(float(np.trace(cov)) / len(mean), 1e-12)
    return mean, cov + eps * scale * np.eye(len(mean))


def class_sample_plan(cond: np.ndarray, labels: np.ndarray, per_class: int,
                      covariance: str, seed: int) -> ConditionPlan:
    """Per class, ``per_class`` draws from N(class mean, shrunk class covariance).

    Draws of an L2-normalised pool are normalised. Classes come in label order.
    """
    cond, _, labels = _pool(cond, [""] * len(cond), labels)
    unit = is_unit_norm(cond)
    out, lab = [], []
    for c, members in _by_class(labels, 2, "class_sample").items():
        mean, cov = class_gaussian(cond[members], covariance)
        w, v = np.linalg.eigh(cov)  # cov = v diag(w) v^T; a square root is v diag(sqrt w)
        root = v * np.sqrt(np.clip(w, 0.0, None))  # (D, D)
        z = np.random.default_rng([seed, c]).standard_normal((per_class, len(mean)))
        draws = mean + z @ root.T  # (per_class, D)
        out.append(_unit(draws) if unit else draws)
        lab.extend([c] * per_class)
    k = len(lab)
    return ConditionPlan("class_sample", np.concatenate(out).astype(np.float32),
                         np.asarray(lab, np.int64), [""] * k, [""] * k, np.zeros(k))


def build_plan(config: GenerateConfig, cond: np.ndarray, ids: list[str],
               labels: np.ndarray, scale: np.ndarray | None = None,
               direction: np.ndarray | None = None) -> ConditionPlan:
    """The plan of ``config.mode`` from a pool: (M, D) representations, M ids, (M,) labels.

    With ``config.perturb > 0`` the plan is perturbed relative to ``scale`` (D,), the
    per-dimension std of the dataset's training encodings; None = the pool's own
    (``representation_scale``). ``direction`` (D,) is the edit's ``d`` (mode "edit" only).
    """
    if config.mode == "variations":
        plan = variations_plan(cond, ids, labels)
    elif config.mode == "interpolate":
        plan = interpolation_plan(cond, ids, labels, config.points)
    elif config.mode == "mixup":
        plan = mixup_plan(cond, ids, labels, config.per_class, config.mix_alpha, config.seed)
    elif config.mode == "class_sample":
        plan = class_sample_plan(cond, labels, config.per_class, config.covariance,
                                 config.seed)
    elif config.mode == "edit":
        if direction is None:
            raise InvalidConfigError("an edit needs its direction (class_direction)")
        plan = edit_plan(cond, ids, labels, direction, config.strengths())
    else:
        raise InvalidConfigError(f"unknown generation mode {config.mode!r}")
    if config.perturb == 0:
        return plan
    return with_perturbation(plan, config.perturb,
                             representation_scale(cond) if scale is None else scale)
