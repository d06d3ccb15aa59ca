""""More like this" at the paper's scale: k = 20 neighbours among 520,000 x 768 vectors.

4x ImageNet-100 is about 520,000 generated samples; a DINOv2 ViT-B/14 CLS is 768-d. The
array is seeded random float32, written to disk and memory-mapped as a project's embeddings
are, in ``--classes`` clusters (class centres plus noise: representations of a labelled
dataset are clustered; ``--uniform`` for plain Gaussian noise, the hardest case for an IVF
index). Side by side in one run:

- the engine's path (``engine.curation.knn``): the index built once (IVF above 100,000
  vectors), saved atomically, loaded back as the studio's cache would be, then one query at a
  time (a click on an image asks one);
- the baseline: brute force in NumPy over the same array (one matrix-vector product per
  query, then a partial sort), one query at a time;
- recall@k of the index against the baseline's exact answer, on the same queries.

Prints a table, then one JSON line: ratio = NumPy time per query / index time per query; the
goal is under 50 ms per query for the index.

Usage: python benchmarks/neighbours.py [--n 520000] [--dim 768] [--k 20] [--queries 200]
       [--numpy-queries 20] [--classes 100] [--nprobe N] [--uniform]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.curation import knn


def make_array(path: Path, n: int, dim: int, classes: int, uniform: bool, seed: int,
               chunk: int = 65_536) -> np.ndarray:
    """(n, dim) float32 memmap at ``path``: class centres + unit noise, or noise alone."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32) * 2.0
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.standard_normal((m, dim), dtype=np.float32)
        if not uniform:
            x += centres[rng.integers(0, classes, m)]
        out[start:start + m] = x
    out.flush()
    return np.load(path, mmap_mode="r")


def per_query(fn, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fn`` on each query alone; (ids (Q, k), seconds (Q,))."""
    ids, secs = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, i = fn(q[None, :])
        secs.append(time.perf_counter() - t0)
        ids.append(i[0])
    return np.stack(ids), np.asarray(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=520_000, help="indexed vectors")
    ap.add_argument("--dim", type=int, default=768, help="dimensions")
    ap.add_argument("--k", type=int, default=20, help="neighbours per query")
    ap.add_argument("--queries", type=int, default=200, help="queries timed on the index")
    ap.add_argument("--numpy-queries", type=int, default=20,
                    help="queries timed on the NumPy baseline (the first of --queries)")
    ap.add_argument("--classes", type=int, default=100, help="clusters of the random data")
    ap.add_argument("--uniform", action="store_true", help="plain Gaussian noise, no clusters")
    ap.add_argument("--nprobe", type=int, help="IVF cells searched (default: the engine's)")
    ap.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        x = make_array(tmp / "embeddings.npy", args.n, args.dim, args.classes, args.uniform,
                       args.seed)
        make_s = time.perf_counter() - t0
        rng = np.random.default_rng(args.seed + 1)
        # queries: half indexed rows ("more like this" of a sample), half new points nearby
        rows = rng.choice(args.n, args.queries, replace=False)
        queries = np.asarray(x[np.sort(rows)], dtype=np.float32)
        queries[1::2] += 0.5 * rng.standard_normal(queries[1::2].shape, dtype=np.float32)

        # 1. the engine: build once, save (atomic), load back: the cached index
        t0 = time.perf_counter()
        index = knn.build_index(x, args.metric, nprobe=args.nprobe, seed=args.seed)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = knn.save_index(index, tmp / "index.faiss")
        save_s = time.perf_counter() - t0
        del index
        t0 = time.perf_counter()
        index = knn.load_index(path)
        load_s = time.perf_counter() - t0
        kind = type(index).__name__
        nlist, nprobe = getattr(index, "nlist", 0), getattr(index, "nprobe", 0)
        knn.search(index, queries[:2], args.k, args.metric)  # warm up
        f_ids, f_secs = per_query(lambda q: knn.search(index, q, args.k, args.metric), queries)

        # 2. the baseline: brute force in NumPy over the whole array (in memory: page cache)
        xa = np.ascontiguousarray(knn.as_vectors(x, args.metric))
        nq = min(args.numpy_queries, args.queries)

        def numpy_knn(q: np.ndarray):
            q = knn.as_vectors(q, args.metric)[0]
            if args.metric == "cosine":
                d = 1.0 - xa @ q  # (N,)
            else:
                d = np.einsum("ij,ij->i", xa, xa) - 2.0 * (xa @ q)
            part = np.argpartition(d, args.k)[:args.k]
            order = part[np.argsort(d[part], kind="stable")]
            return d[order][None, :], order[None, :]

        numpy_knn(queries[:1])  # warm up
        n_ids, n_secs = per_query(numpy_knn, queries[:nq])
        recall = float(np.mean([len(set(a) & set(b)) / args.k
                                for a, b in zip(f_ids[:nq], n_ids)]))

    faiss_ms = 1000 * float(np.median(f_secs))
    numpy_ms = 1000 * float(np.median(n_secs))
    ratio = numpy_ms / faiss_ms
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"data {args.n:,} x {args.dim} float32 ({args.n * args.dim * 4 / 2**30:.2f} GiB), "
          f"{'uniform' if args.uniform else f'{args.classes} clusters'}, {args.metric}")
    print(f"{'step':42s} {'value':>12s}")
    for name, value in [
        ("write the array (memmap)", f"{make_s:.1f} s"),
        (f"build the index ({kind}, nlist {nlist}, nprobe {nprobe})", f"{build_s:.1f} s"),
        ("save the index (atomic)", f"{save_s:.1f} s"),
        ("load the cached index", f"{load_s:.2f} s"),
        (f"index: median per query ({len(f_secs)} queries, k={args.k})", f"{faiss_ms:.2f} ms"),
        ("index: 95th percentile per query", f"{1000 * np.quantile(f_secs, 0.95):.2f} ms"),
        (f"NumPy brute force: median per query ({nq})", f"{numpy_ms:.2f} ms"),
        (f"recall@{args.k} of the index vs brute force ({nq} queries)", f"{recall:.3f}"),
        ("NumPy / index", f"{ratio:.1f}x"),
    ]:
        print(f"{name:42s} {value:>12s}")
    print(json.dumps({
        "claim": f"k={args.k} neighbours among {args.n} x {args.dim} float32 with the cached "
                 f"faiss index, per query",
        "ratio": round(ratio, 2), "goal": "under 50 ms per query", "met": faiss_ms < 50.0,
        "faiss_ms": round(faiss_ms, 3), "numpy_ms": round(numpy_ms, 3),
        "recall_at_k": round(recall, 4), "index": kind, "nlist": nlist, "nprobe": nprobe,
        "build_s": round(build_s, 1), "load_s": round(load_s, 2)}))


if __name__ == "__main__":
    main()
