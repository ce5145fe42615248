"""The training stage: one Ray Train run of the ResNet on a dataset's Ray Data shards.

``config`` (the run's settings), ``config_file`` (experiment files for ``--config``), ``hyperparams`` (the registry
of the values PBT mutates), ``cluster`` (connecting to Ray), ``launch`` (starting a TorchTrainer and relaying its
reports), ``mailbox`` (the run's control folder: reports, commands, the stop file), ``placement`` (records of the
runs' placement groups), ``loop`` (what every Train worker runs), ``shard_cache`` (a worker's copy of a small shard),
``checkpoint`` (the checkpoint format) and ``ray_private`` (every private Ray Train API and setting the product
relies on, each pinned by a test; Tune's are in ``workflows.tuning.tune_private``).
"""
