"""The prediction run's configuration (:class:`PredictConfig`, predict.py's flags) and its :class:`PredictResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from data.format import SPLITS
from data.storage import is_uri, shown
from workflows.serving.evaluate import PREDICT_BATCH_SIZE


@dataclass(frozen=True)
class PredictConfig:
    """One prediction run; the fields are predict.py's flags.

    Attributes:
        model: The model bundle folder (local).
        input: A Parquet file of patches or a dataset folder: a local path, or an object-store URI (kept a ``str``).
        output: A Parquet file (a name ending in ``.parquet``) or a folder of part files (any other name): a local
            path, or an object-store URI (kept a ``str``).
        split: The split classified when ``input`` is a dataset folder.
        overwrite: Replace an existing output.
        batch_size: Patches per forward pass.
        ensemble: Average all the bundle's members (False: its best alone); None: the bundle's mode.
        tta: Average over the test-time augmentation views (False: none); None: the bundle's mode.
        concurrency: Model actors; None (and at most): one per cluster CPU but one, kept for reading and writing.
        address: Ray cluster address (``local`` starts a private one); None: join one or start one.
        num_cpus: CPUs of a newly started local cluster; None: all.
    """

    model: Path
    input: Path | str
    output: Path | str
    split: str = "test"  # the held-out split: what a model is usually run on
    overwrite: bool = False  # predictions are never replaced unless asked
    batch_size: int = PREDICT_BATCH_SIZE  # the in-process evaluation's batch: same memory, same speed per call
    ensemble: bool | None = None  # the bundle records how it was meant to predict
    tta: bool | None = None  # likewise
    concurrency: int | None = None  # single-threaded actors on all CPUs but the one reading and writing
    address: str | None = None  # RAY_ADDRESS or a running local cluster, else a new one (workflows/training/cluster.py)
    num_cpus: int | None = None  # a new local cluster takes the whole machine

    def __post_init__(self) -> None:
        if is_uri(self.model):
            raise ValueError(
                f"--model {shown(self.model)}: must be a local bundle folder; copy the bundle to this machine first"
            )
        object.__setattr__(self, "model", Path(self.model))
        for name in ("input", "output"):  # a URI stays a string: a Path would fold its "//"
            value = getattr(self, name)
            object.__setattr__(self, name, shown(value) if is_uri(value) else Path(value))
        if self.batch_size < 1 or (self.concurrency is not None and self.concurrency < 1):
            raise ValueError("--batch-size and --concurrency must be at least 1")
        if self.split not in SPLITS:
            raise ValueError(f"--split {self.split!r}: expected one of {', '.join(SPLITS)}")


@dataclass(frozen=True)
class PredictResult:
    """What a prediction run did.

    Attributes:
        output: The Parquet file or folder written (a path, or a URI as a ``str``).
        patches: Patches classified.
        seconds: Ray start-up and inference (writing and checking the output included).
        startup_seconds: Connecting to or starting Ray.
        inference_seconds: Reading, classifying, writing and checking.
        accuracy: Accuracy against the input's labels; None for unlabelled input.
        macro_f1: Macro-F1 against the input's labels; None for unlabelled input.
    """

    output: Path | str
    patches: int
    seconds: float
    startup_seconds: float
    inference_seconds: float
    accuracy: float | None = None
    macro_f1: float | None = None


def config_defaults() -> dict[str, object]:
    """The defaults of :class:`PredictConfig`, by field name, for the script's flags."""
    return {f.name: f.default for f in dataclasses.fields(PredictConfig) if f.default is not dataclasses.MISSING}
