"""The trained model in use: the bundle, inference and test evaluation, and the baselines it is compared with.

``bundle`` (the self-contained model folder predict.py loads), ``evaluate`` (probabilities, TTA, ensembles,
metrics) and ``baselines`` (random forest and logistic regression on the same splits).
"""
