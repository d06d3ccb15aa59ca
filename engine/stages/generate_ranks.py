"""Generation on several processes: one shard of a generation's plan per rank, under torchrun.

The generate job (``generate_stage.run``) with ``GenerateConfig.processes`` = P > 1 writes
the plan once (``shard_stage.write_plan``) into ``GENERATION/ranks-plan/``, starts P ranks
of this module through the runtime's launcher (``engine.torchrun.launcher.run_processes``:
torchrun, rank 0's progress, cancel as SIGTERM, errors quoted) and then moves the shards'
images into the generation's own layout. Rank k generates shard k of P
(``shard_stage.run_shard``: samples k, k + P, ...; each image the one a single process
writes). The ranks need no collective: each writes its shard and its manifest::

    torchrun --standalone --nproc_per_node 8 -m engine.stages.generate_ranks --plan DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.progress import ProgressEvent

MODULE = "engine.stages.generate_ranks"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="generate one shard of a plan per process")
    ap.add_argument("--plan", required=True, help="folder of plan.json (shard_stage)")
    ap.add_argument("--model-dir", help="the model's folder on this machine")
    ap.add_argument("--progress", help="rank 0 appends progress events (JSON lines) here")
    args = ap.parse_args(argv)
    from engine.stages import shard_stage
    from engine.torchrun.ranks import progress_writer, rank_setup, run_rank, write_rank_result

    rank, cancel = rank_setup()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    write = progress_writer(args.progress, rank)

    def progress(event: ProgressEvent) -> None:  # rank 0's share, scaled to the whole run
        if event.total:
            write(ProgressEvent(stage=event.stage, step=event.step * world,
                                total=event.total * world, message=event.message))

    def body() -> dict:
        return shard_stage.run_shard(Path(args.plan), rank, world,
                                     Path(args.model_dir) if args.model_dir else None,
                                     progress=progress, cancel=cancel)

    code, result = run_rank(body)
    if result is not None:
        write_rank_result(Path(args.plan), rank, result)
    return code


if __name__ == "__main__":
    sys.exit(main())
