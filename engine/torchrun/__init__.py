"""The one distributed runtime: RCDM training and classifier training run on 1..N processes
through it.

    launcher   the owner's half: ``run_processes`` starts torchrun on a rank module, forwards
               rank 0's progress, cancels, and returns rank 0's result or one clear error
               (the ranks' ERROR lines and the tail of their log); no torch imported
    ranks      the rank's half: ``Ranks`` (rank, world size, device, rows of a batch, DDP
               wrapping, sum / any / barrier; the identity alone), ``weights_digest``, and the
               entry-point helpers ``rank_setup``, ``progress_writer``, ``run_rank``,
               ``write_rank_result``
    batchnorm  ``GlobalBatchNorm``: BatchNorm statistics over all gloo ranks on the CPU

A run on P processes, e.g. the train job with ``processes=2``::

    owner:   launch_train_rcdm -> run_processes("engine.rcdm.training_ranks", args, 2, OUT, ...)
    rank r:  training_ranks.main -> rank_setup, run_rank(train_rcdm ... Ranks(device) ...)
             -> OUT/ranks/rank_<r>.json; rank 0 appends OUT/launch/progress.jsonl
"""
