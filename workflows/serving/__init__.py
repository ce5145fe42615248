"""The trained model in use: the bundle, inference and test evaluation, the baselines, and batch prediction.

``bundle`` (the self-contained model folder predict.py loads), ``evaluate`` (probabilities, TTA, ensembles,
metrics), ``baselines`` (random forest and logistic regression on the same splits) and ``predict`` (batch prediction
with Ray Data: ``predict_run(PredictConfig)``, one module a job).
"""
