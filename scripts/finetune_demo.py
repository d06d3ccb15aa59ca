"""A pretrained RCDM as a starting point, measured on the digits: pretrain on digits 0-4,
then learn digits 5-9 from 25 training images per class, fine-tuned against from scratch.

Steps (every stage through the engine's jobs, in one project, on the CPU):

1. the bundled digits split in two ImageFolders: 0-4 (all images) and 5-9;
2. import both (20 % test; 5-9 keeps 25 training images per class), PCA of pixels (32-d)
   for each;
3. the quick preset on 0-4 (the pretrained model), then on the 25-per-class 5-9 twice with
   the same budget: from random weights, and from the pretrained model (``--init``);
4. 2x variations of the 125 training images with each model, re-encoded with 5-9's PCA;
5. Fréchet distance in that representation space, generated vs the real training images,
   and the training value: a classifier on real only and on real + each 2x set, scored on
   5-9's held-out test images.

Prints a table, then one JSON line. Usage: python scripts/finetune_demo.py [--dir D]
[--steps 400] [--epochs 8] [--seeds 2] [--channels auto|1|3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--channels", choices=["auto", "1", "3"], default="auto",
                    help="the RCDMs' channels (auto: the digits are greyscale, so 1; 3: RGB, "
                         "as measured before greyscale models)")
    args = ap.parse_args()

    from engine.config import QUICK_TRAIN, EncodeConfig, EvalConfig, GenerateConfig, ImportConfig, TrainConfig
    from engine.curation.generative_metrics import frechet_distance
    from engine.data import write_demo_dataset
    from engine.jobs import JobManager
    from engine.project import Dataset, Encoding, Evaluation, Project
    from engine.stages import (
        curate_stage,
        encode_stage,
        evaluate_stage,
        generate_stage,
        import_stage,
        train_stage,
    )

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp_s:
        root = Path(args.dir or tmp_s)
        digits = write_demo_dataset(root / "digits")
        halves = {}
        for name, classes in (("low", "01234"), ("high", "56789")):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            for c in classes:
                if not (folder / c).exists():
                    (folder / c).symlink_to(digits / c, target_is_directory=True)
            halves[name] = folder
        with Project(root / "finetune") as p:
            jobs = JobManager(p)

            def run(spec):
                print(f"-> {spec.title}", flush=True)
                return jobs.run_inline(spec).result_id

            low = run(import_stage.prepare(p, halves["low"], "digits-0-4",
                                           ImportConfig(test_fraction=0.2)))
            high = run(import_stage.prepare(p, halves["high"], "digits-5-9-25",
                                            ImportConfig(test_fraction=0.2,
                                                         train_per_class=25)))
            enc = EncodeConfig(encoder="pca", dim=32, image_size=QUICK_TRAIN.get("image_size",
                                                                                  16))
            for ds in (low, high):
                run(encode_stage.prepare(p, enc, dataset_ref=ds))
            quick = TrainConfig(**{**QUICK_TRAIN, "steps": args.steps,
                                    "channels": None if args.channels == "auto"
                                    else int(args.channels)})
            pre = run(train_stage.prepare(p, quick, low, encoder="pca", name="pretrained-0-4"))
            models = {
                "scratch": run(train_stage.prepare(p, quick, high, encoder="pca",
                                                   name="scratch-5-9")),
                "fine-tuned": run(train_stage.prepare(p, quick, high, encoder="pca",
                                                      name="finetuned-5-9", init=pre)),
            }
            ds = p.get(Dataset, high)
            real_enc = [e for e in p.list(Encoding, dataset_id=high) if e.target == "dataset"][0]
            train_rows = p.images(high, split="train").sort_values("idx")
            real = np.asarray(p.embeddings(real_enc))[train_rows["idx"].to_numpy()]
            rows = {}
            evaluate = EvalConfig(epochs=args.epochs)
            for seed in range(args.seeds):
                e = run(evaluate_stage.prepare(p, evaluate.replace(seed=seed), mix="real",
                                               dataset_ref=high, name=f"real-{seed}"))
                rows.setdefault("real only", []).append(p.get(Evaluation, e).top1)
            fd = {}
            for key, model in models.items():
                gen = run(generate_stage.prepare(p, GenerateConfig(variations=2, sampler="ddim",
                                                                   steps=10), model,
                                                 name=f"{key}-x2"))
                run(encode_stage.prepare(p, enc, generation_ref=gen))
                gen_enc = [e for e in p.list(Encoding) if e.target_id == gen][0]
                fd[key] = frechet_distance(real, np.asarray(p.embeddings(gen_enc)))
                sel = curate_stage.save_all(p, gen, name=f"{key}-all")
                for seed in range(args.seeds):
                    e = run(evaluate_stage.prepare(p, evaluate.replace(seed=seed),
                                                   mix="real+synthetic", dataset_ref=high,
                                                   selection_ref=sel.id,
                                                   name=f"{key}-{seed}"))
                    rows.setdefault(f"real + 2x {key}", []).append(p.get(Evaluation, e).top1)
    out = {"train_images": int(ds.num_train), "test_images": int(ds.num_test),
           "steps": args.steps, "epochs": args.epochs, "seeds": args.seeds,
           "fd": {k: round(float(v), 3) for k, v in fd.items()},
           "top1": {k: [round(float(v), 2) for v in vs] for k, vs in rows.items()},
           "seconds": round(time.time() - t0, 1)}
    print(f"{'':<24} {'FD (PCA space)':>14} {'top-1 % (mean of seeds)':>24}")
    for k, vs in rows.items():
        name = k.replace("real + 2x ", "")
        f = f"{fd[name]:.3f}" if name in fd else ""
        print(f"{k:<24} {f:>14} {np.mean(vs):>24.2f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
