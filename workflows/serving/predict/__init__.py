"""Batch prediction: stream a patch file through a pool of Ray Data model actors into Parquet predictions.

The driver reads only footers, the ``patch_id`` column (the one whole-file check: unique ids) and, after the write,
the ids, labels and predicted labels batch by batch, to check order and count a confusion matrix. It never holds
pixels or all the predictions. Input and output may be local paths or object-store URIs (anything
:mod:`data.storage` resolves); the model bundle is a local folder.

Modules, by job: ``config`` (:class:`PredictConfig`, :class:`PredictResult`), ``run`` (:func:`predict_run`, the
orchestration), ``pipeline`` (the Ray Data read, checks, actor pool and write), ``predictor`` (the model actor and the
columns it writes), ``output`` (output kinds, refusals and staging), ``verify`` (part order and the check of every
row) and ``progress`` (the progress lines).
"""

from workflows.serving.predict.config import PredictConfig, PredictResult, config_defaults
from workflows.serving.predict.run import predict_run

__all__ = ["PredictConfig", "PredictResult", "config_defaults", "predict_run"]
