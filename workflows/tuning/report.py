"""The PBT experiment report: a JSON summary and PNG plots of the population's runs and the test confusion matrix."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from data.atomic import write_file_atomic
from workflows.serving.evaluate import shown_variant
from workflows.training.hyperparams import MUTABLES

SUMMARY_FILE = "report.json"
VAL_ACC_PLOT = "val_acc.png"
HYPERPARAMETER_PLOT = "hyperparameters.png"
CONFUSION_PLOT = "confusion_matrix.png"
PLOTS = (VAL_ACC_PLOT, HYPERPARAMETER_PLOT, CONFUSION_PLOT)
TEST_METRICS = ("accuracy", "macro_f1", "kappa")
DPI = 120
X_LABEL = "reports (epochs trained by this member)"


def write_report(pbt: dict[str, Any], test_metrics: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the summary JSON and the three plots of a PBT run into ``out_dir``, each file atomically.

    Args:
        pbt: The PBT run's record: ``metric``, ``best_trial`` and per-trial ``initial_config``, ``final_config``,
            ``history`` (one entry per report), ``exploits`` and ``final``.
        test_metrics: The shipped model's test-split metrics: ``accuracy``, ``macro_f1``, ``kappa``,
            ``confusion_matrix`` (rows are true classes) and ``class_names``; optionally ``variant`` (its name),
            ``variants`` (accuracy, macro-F1 and kappa of each way the population predicts) and ``baselines``
            (those of the classic models, or why one was skipped), as ``workflows.serving.evaluate.evaluate_members``
            and
            ``workflows.serving.baselines.run_baselines`` give them.
        out_dir: Folder to write into; created if missing. Existing report files are replaced.

    Returns:
        Each written file's name mapped to its path: ``report.json``, ``val_acc.png``, ``hyperparameters.png``
        and ``confusion_matrix.png``.

    Raises:
        ValueError: If ``pbt`` has no trials or names a best trial it does not contain, or the confusion matrix
            does not match the class names.
    """
    _check_inputs(pbt, test_metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = _trial_colours(pbt["trials"])
    written = {
        VAL_ACC_PLOT: _save_figure(_plot_val_acc(pbt, colours), out / VAL_ACC_PLOT),
        HYPERPARAMETER_PLOT: _save_figure(_plot_hyperparameters(pbt, colours), out / HYPERPARAMETER_PLOT),
        CONFUSION_PLOT: _save_figure(_plot_confusion(test_metrics), out / CONFUSION_PLOT),
    }
    body = json.dumps(_summary(pbt, test_metrics), indent=2) + "\n"
    written[SUMMARY_FILE] = write_file_atomic(out / SUMMARY_FILE, lambda handle: handle.write(body.encode()))
    return written


def format_summary(pbt: dict[str, Any]) -> str:
    """A plain-text table of the population, one row per trial, the best trial marked with ``*``.

    Args:
        pbt: The PBT run's record, as for :func:`write_report`.

    Returns:
        The table, without a trailing newline; a hyperparameter that is off (``grad_clip`` 0) shows as ``off``.
    """
    metric = pbt.get("metric", "val_acc")
    best = pbt.get("best_trial", "")
    width = max([len("trial"), *(len(trial_id) for trial_id in pbt["trials"])])
    columns = [(f"init {m.name}", m, "initial_config") for m in MUTABLES]
    columns += [(f"final {m.name}", m, "final_config") for m in MUTABLES]
    header = f"  {'trial':<{width}}" + "".join(f"  {title:>{max(9, len(title))}}" for title, _, _ in columns)
    header += f"  {'exploits':>8}  {'final ' + metric:>13}  diverged at end"
    lines = [header]
    for trial_id, trial in pbt["trials"].items():
        final = trial.get("final", {})
        values = "".join(f"  {m.text(trial[key].get(m.name)):>{max(9, len(title))}}" for title, m, key in columns)
        lines.append(
            f"{'*' if trial_id == best else ' '} {trial_id:<{width}}{values}"
            f"  {len(trial.get('exploits', [])):>8d}  {_metric_text(final.get(metric)):>13}"
            f"  {'yes' if final.get('diverged') else 'no'}"
        )
    lines.append(f"* best trial by final {metric} ({pbt.get('mode', 'max')})")
    return "\n".join(lines)


def _check_inputs(pbt: dict[str, Any], test_metrics: dict[str, Any]) -> None:
    """Raise a one-line ``ValueError`` for a record the report cannot be drawn from."""
    trials = pbt.get("trials") or {}
    if not trials:
        raise ValueError("PBT record has no trials: pass the dict the PBT run wrote, with a non-empty 'trials'")
    best = pbt.get("best_trial")
    if best not in trials:
        raise ValueError(f"PBT record's best_trial {best!r} is not among its trials {sorted(trials)}")
    matrix = np.asarray(test_metrics["confusion_matrix"])
    classes = len(test_metrics["class_names"])
    if matrix.shape != (classes, classes):
        raise ValueError(
            f"test confusion matrix has shape {matrix.shape} but there are {classes} class names: "
            "pass the metrics of one evaluation"
        )


def _summary(pbt: dict[str, Any], test_metrics: dict[str, Any]) -> dict[str, Any]:
    """The report's JSON body: best trial, test metrics, per-trial outcome, plot file names."""
    metric = pbt.get("metric", "val_acc")
    trials = {}
    for trial_id, trial in pbt["trials"].items():
        final = trial.get("final", {})
        trials[trial_id] = {
            f"final_{metric}": _finite_or_none(final.get(metric)),
            "final_epoch": final.get("epoch"),
            "diverged": bool(final.get("diverged", False)),
            "exploits": len(trial.get("exploits", [])),
            "reports": len(trial.get("history", [])),
            "diverged_reports": sum(bool(entry.get("diverged")) for entry in trial.get("history", [])),
            "initial_config": trial["initial_config"],
            "final_config": trial["final_config"],
        }
    best = pbt["best_trial"]
    return {
        "metric": metric,
        "mode": pbt.get("mode", "max"),
        "population": len(trials),
        "best_trial": best,
        "best_config": pbt["trials"][best]["final_config"],
        "test": _test_summary(test_metrics),
        "diverged_at_end": sum(trial["diverged"] for trial in trials.values()),
        "trials": trials,
        "plots": list(PLOTS),
    }


def _plot_val_acc(pbt: dict[str, Any], colours: dict[str, Any]) -> Figure:
    """Validation metric per trial over its reports, with exploits (and donors) and diverged reports marked."""
    metric = pbt.get("metric", "val_acc")
    short = _short_ids(list(pbt["trials"]))
    fig = Figure(figsize=(11, 5.5), layout="constrained")  # no pyplot: no global figure state, no backend switch
    ax = fig.subplots()
    bottom = ax.get_xaxis_transform()  # x in data units, y in axes units: marks that stay on the floor of the plot
    for row, (trial_id, trial) in enumerate(pbt["trials"].items()):
        history = trial.get("history", [])
        x = np.arange(1, len(history) + 1)
        y = np.array([_finite_or_nan(entry.get(metric)) for entry in history])
        is_best = trial_id == pbt["best_trial"]
        label = f"{trial_id} (best)" if is_best else trial_id
        ax.plot(x, y, color=colours[trial_id], lw=2.4 if is_best else 1.4, marker="o", ms=3, label=label)
        diverged = x[[bool(entry.get("diverged")) for entry in history]]
        # One row of marks per member, in legend order, so members diverging at the same report stay apart.
        floor = 0.025 + 0.03 * row
        ax.plot(diverged, np.full(len(diverged), floor), "x", color="red", ms=6, mew=2, transform=bottom)
        for exploit in trial.get("exploits", []):
            index = exploit["report_index"]
            if not 0 <= index < len(history):
                continue
            # Where the metric is missing (a diverged report), draw the marker on the floor instead.
            at = y[index] if math.isfinite(y[index]) else 0.0
            ax.plot(index + 1, at, "D", color=colours[trial_id], mec="black", ms=7, zorder=3)
            ax.annotate(
                f"from {short[exploit['donor']]}" if exploit["donor"] in short else f"from {exploit['donor']}",
                (index + 1, at),
                xytext=(6, -16),
                textcoords="offset points",
                fontsize=8,
                color=colours[trial_id],
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
            )
    ax.set_ylim(0, 1.02 if metric.endswith("acc") else None)
    _report_axis(ax, pbt)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per PBT member")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    trials = pbt["trials"].values()
    if any(trial.get("exploits") for trial in trials):
        handles.append(Line2D([], [], ls="", marker="D", color="grey", mec="black", label="exploit (from donor)"))
    if any(entry.get("diverged") for trial in trials for entry in trial.get("history", [])):
        handles.append(
            Line2D([], [], ls="", marker="x", color="red", mew=2, label="diverged report (a row per member)")
        )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return fig


def _plot_hyperparameters(pbt: dict[str, Any], colours: dict[str, Any]) -> Figure:
    """Each mutable hyperparameter per trial over its reports (one panel each), exploits drawn as dotted lines."""
    fig = Figure(figsize=(11, 3.5 * len(MUTABLES)), layout="constrained")
    axes = fig.subplots(len(MUTABLES), 1, sharex=True)
    axes = np.atleast_1d(axes)
    for ax, mutable in zip(axes, MUTABLES, strict=True):
        values = [entry.get(mutable.name) for trial in pbt["trials"].values() for entry in trial.get("history", [])]
        positive = sorted({v for v in values if v and v > 0})
        # Where "off" sits on a log axis: one step below the smallest value.
        off = positive[0] / 2 if positive else 1.0
        any_off = mutable.off and (any(not v for v in values) or not positive)
        for trial_id, trial in pbt["trials"].items():
            history = trial.get("history", [])
            x = np.arange(1, len(history) + 1)
            y = [(entry.get(mutable.name) or off) if mutable.off else entry.get(mutable.name) for entry in history]
            ax.plot(x, y, color=colours[trial_id], marker="o", ms=3, label=trial_id)
            for exploit in trial.get("exploits", []):
                ax.axvline(exploit["report_index"] + 1, color=colours[trial_id], ls=":", lw=1.2)
        if mutable.log_scale:
            ax.set_yscale("log")
        if mutable.off and positive and len(positive) <= 12:  # a few choices: label each, and "off"
            ticks = [off, *positive] if any_off else positive
            ax.set_yticks(ticks, [*(["off"] if any_off else []), *(f"{v:g}" for v in positive)])
            ax.minorticks_off()
            ax.set_ylim(min(ticks) / 1.5, max(ticks) * 1.5)
        if any_off:
            ax.text(0.01, 0.03, f"{mutable.name} 0 = off (drawn at the bottom)", transform=ax.transAxes, fontsize=8)
        ax.set_ylabel(mutable.name)
        ax.grid(alpha=0.3)
    names = " and ".join(m.name for m in MUTABLES)
    axes[0].set_title(f"{names} per PBT member (dotted lines: exploits, in the member's colour)")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    _report_axis(axes[-1], pbt)
    return fig


def _plot_confusion(test_metrics: dict[str, Any]) -> Figure:
    """The test confusion matrix: counts in the cells, colour normalised per true class."""
    counts = np.asarray(test_metrics["confusion_matrix"], dtype=np.int64)
    names = list(test_metrics["class_names"])
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = max(4.5, 0.75 * len(names) + 2.5)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if share[row, col] > 0.5 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=9)
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = test_metrics.get("accuracy")
    variant = f", {shown_variant(test_metrics['variant'])}" if "variant" in test_metrics else ""
    ax.set_title(f"test confusion matrix{variant}" + (f" (accuracy {accuracy:.3f})" if accuracy is not None else ""))
    fig.colorbar(image, ax=ax, label="fraction of the true class", shrink=0.8)
    return fig


def _report_axis(ax: Axes, pbt: dict[str, Any]) -> None:
    """Label the x axis as report numbers: whole numbers from the first report to the longest history."""
    longest = max(len(trial.get("history", [])) for trial in pbt["trials"].values())
    ax.set_xlim(0.5, max(longest, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel(X_LABEL)


def _trial_colours(trials: dict[str, Any]) -> dict[str, Any]:
    """One colour per trial, the same in every plot."""
    cmap = matplotlib.colormaps.get_cmap("tab10" if len(trials) <= 10 else "tab20")
    return {trial_id: cmap(i % cmap.N) for i, trial_id in enumerate(trials)}


def _short_ids(trial_ids: Sequence[str]) -> dict[str, str]:
    """Trial ids without the prefix they all share up to its last ``_`` (``abc_00001`` -> ``00001``)."""
    prefix = os.path.commonprefix(list(trial_ids)) if len(trial_ids) > 1 else ""
    cut = prefix.rfind("_") + 1
    return {trial_id: trial_id[cut:] or trial_id for trial_id in trial_ids}


def _save_figure(fig: Figure, path: Path) -> Path:
    """Save a figure as PNG atomically (a bare ``Figure`` renders with Agg whatever pyplot's backend is)."""
    return write_file_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))


def _test_summary(test_metrics: dict[str, Any]) -> dict[str, Any]:
    """The shipped model's test figures, and those of its variants and the baselines where the metrics hold them."""
    summary: dict[str, Any] = {name: _finite_or_none(test_metrics.get(name)) for name in TEST_METRICS}
    if "variant" in test_metrics:
        summary["variant"] = test_metrics["variant"]
    for group in ("variants", "baselines"):
        if group in test_metrics:
            summary[group] = {name: _figures(body) for name, body in test_metrics[group].items()}
    return summary


def _figures(body: dict[str, Any]) -> dict[str, Any]:
    """A variant's or baseline's test figures, NaN as ``None``; its name and a skip note kept as they are."""
    figures = {key: body[key] for key in ("name", "skipped") if key in body}
    figures.update({name: _finite_or_none(body[name]) for name in TEST_METRICS if name in body})
    return figures


def _finite_or_nan(value: Any) -> float:
    """``value`` as a float, NaN where it is missing or not finite."""
    return float(value) if value is not None and math.isfinite(value) else math.nan


def _finite_or_none(value: Any) -> float | None:
    """``value`` as a float, ``None`` where it is missing or not finite (JSON has no NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None


def _metric_text(value: Any) -> str:
    """A metric for the table: four decimals, or ``-`` where missing or not finite."""
    value = _finite_or_none(value)
    return "-" if value is None else f"{value:.4f}"
