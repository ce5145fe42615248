"""The end-to-end jobs as library calls, each the whole of one entry script's work.

``experiment`` (the PBT experiment: ``tune_experiment(ExperimentConfig) -> ExperimentResult``) and ``training_run``
(one Ray Train run, then its test and bundle: ``train_run(TrainJob) -> TrainResult``). They sit above every stage
(data, training, serving, tuning), which never import them; ``workflows/`` holds the command lines around them.
"""
