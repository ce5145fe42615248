"""The training stage: one Ray Train run of the ResNet on a dataset's Ray Data shards.

``config`` (the run's settings), ``config_file`` (experiment files for ``--config``), ``hyperparams`` (the registry
of the values PBT mutates), ``cluster`` (connecting to Ray), ``launch`` (starting a TorchTrainer and relaying its
reports), ``loop`` (what every Train worker runs), ``shard_cache`` (a worker's copy of a small shard) and
``checkpoint`` (the checkpoint format).
"""
