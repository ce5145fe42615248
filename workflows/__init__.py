"""Entry scripts: dataset generation and import, training, population-based tuning and batch inference.

Each parses its flags into a typed config and makes one library call (``jobs.training_run.train_run``,
``jobs.experiment.tune_experiment``, ...); ``flags`` holds the flag value checks they share.
"""
