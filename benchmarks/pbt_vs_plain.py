"""Print the wall time of the PBT main job (workflows/tune.py) beside the same schedule as a plain PyTorch loop.

First the real job runs: ``workflows.jobs.experiment.tune_experiment`` with tune.py's defaults (``--quick``: the smoke
test)
on a local 2-CPU Ray cluster that this script starts. Then the same members
(``workflows.training.hyperparams.initial_population``), epochs, data, batch size and per-member ``lr``/``grad_clip``
train
one after another in this process, without Ray, with the same health guards (``workflows.training.loop.train_epoch``)
and a
validation pass every epoch. PBT's exploits are replayed from the job's ``pbt.json``: before the epoch after an
exploit, the member takes the donor's model and optimizer state at the donor epoch (every epoch, as the members
checkpoint every epoch) and then its mutated ``lr`` and ``grad_clip``, epoch for epoch as the job reported them. A
member waits (another trains first) until its donor has reached the donor epoch. If the record cannot be replayed,
the plain loop trains the initial settings without exploits and says so.

Example:
    python benchmarks/pbt_vs_plain.py                  # 4 members x 30 epochs, the job's defaults
    python benchmarks/pbt_vs_plain.py --quick          # --smoke-test: 2 members x 4 epochs, small network
    python benchmarks/pbt_vs_plain.py --results results/pbt-bench
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch import nn

from data.folder import read_dataset
from data.format import PatchDataset
from data.pipeline import LABEL_COLUMN, MIN_STD, PIXELS_COLUMN, BandStats, D4Collate, normalise
from workflows.jobs.experiment import ExperimentConfig, format_outcome, tune_experiment
from workflows.serving.evaluate import predict_probabilities
from workflows.training.cluster import connect
from workflows.training.config import GRAD_CLIP, LR, TrainConfig
from workflows.training.hyperparams import PopulationOptions, apply_to_optimizer, initial_population
from workflows.training.loop import (
    EVAL_BATCH_SIZE,
    build_model,
    build_optimizer,
    epoch_metrics,
    evaluate_shard,
    train_epoch,
)

CPUS = 2  # the cluster this script starts, and the plain loop's torch threads
TARGET_RATIO = 1.8  # the target for Ray wall time / plain wall time...
GOAL_RATIO = 1.5  # ...and its goal


class ReplayError(ValueError):
    """``pbt.json`` describes a schedule the plain loop cannot replay."""


@dataclass
class Row:
    """One epoch a member trains: its number, settings, and the donor state to load first (if exploited)."""

    epoch: int
    lr: float
    grad_clip: float | None
    donor: str = ""
    donor_epoch: int = 0


@dataclass
class Member:
    """One member of the plain population: its schedule, model, optimizer and progress."""

    name: str
    rows: list[Row]
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    done: int = 0
    last: dict[str, Any] = field(default_factory=dict)


def start_ray(cpus: int = CPUS) -> None:
    """A new local Ray cluster of ``cpus`` CPUs for this script alone (never one that is already running)."""
    connect("local", cpus)


def _clip(value: Any) -> float | None:
    return float(value) if value else None


def schedule_from_record(record: dict[str, Any], members: list[dict[str, Any]]) -> list[Member]:
    """Each member's epochs as the PBT job reported them, with its exploits.

    Args:
        record: The job's ``pbt.json``.
        members: The initial population; the record's trials are matched to it by initial ``lr``.

    Raises:
        ReplayError: The record's trials do not match the population.
    """
    by_lr = {round(float(t["initial_config"][LR]), 12): (name, t) for name, t in record["trials"].items()}
    schedule = []
    for index, member in enumerate(members):
        found = by_lr.get(round(member[LR], 12))
        if found is None:
            raise ReplayError(f"no trial in pbt.json started with member {index}'s lr {member[LR]:.4g}")
        name, trial = found
        rows = [
            Row(int(h["epoch"]), float(h[LR]), _clip(h[GRAD_CLIP]), h.get("exploited_from") or "")
            for h in trial["history"]
        ]
        for row, h in zip(rows, trial["history"], strict=True):
            if row.donor:
                row.donor_epoch = int(h["restored_epoch"])
        schedule.append(Member(name, rows))
    return schedule


def initial_schedule(members: list[dict[str, Any]], epochs: int) -> list[Member]:
    """Every member trains its initial settings for all epochs, without exploits."""
    return [
        Member(f"member-{i}", [Row(e, m[LR], m[GRAD_CLIP]) for e in range(1, epochs + 1)])
        for i, m in enumerate(members)
    ]


def exploit_figures(record: dict[str, Any]) -> dict[str, Any]:
    """Exploit gaps, recovery and Train-run restarts from the job's ``pbt.json``.

    Returns:
        ``gaps``: seconds between a member's last report before each exploit and its first after (``reported_at``);
        ``recovery``: for each member whose reports went diverged, how many reports from the first diverged one
        until the exploit that replaced it (1: at the next report) or None if none came; ``train_runs``: how many
        Train runs each member's reports came from (more than one when Tune handed it another member's process, whose
        run it then continues with); ``runs_started``: distinct Train runs in the whole experiment (the population
        size when no exploit started a new worker group).
    """
    gaps, recovery, train_runs = [], [], []
    for trial in record["trials"].values():
        history = trial["history"]
        for exploit in trial["exploits"]:
            index = exploit["report_index"]
            if index > 0 and history[index].get("reported_at") and history[index - 1].get("reported_at"):
                gaps.append(history[index]["reported_at"] - history[index - 1]["reported_at"])
        first_bad = next((i for i, h in enumerate(history) if h.get("diverged")), None)
        if first_bad is not None:
            after = [e["report_index"] for e in trial["exploits"] if e["report_index"] > first_bad]
            recovery.append(after[0] - first_bad if after else None)
        train_runs.append(len({h.get("train_run") for h in history if h.get("train_run")}))
    started = {h.get("train_run") for t in record["trials"].values() for h in t["history"] if h.get("train_run")}
    return {"gaps": gaps, "recovery": recovery, "train_runs": train_runs, "runs_started": len(started)}


def plan(schedule: list[Member]) -> list[tuple[int, int]]:
    """The order to train (member index, row index): each member as far as it can, then the next.

    A member stops when its next epoch needs a donor state that has not been trained yet.

    Raises:
        ReplayError: Some member waits for a donor state that never comes.
    """
    names = {m.name for m in schedule}
    ready: set[tuple[str, int]] = set()
    done = [0] * len(schedule)
    order: list[tuple[int, int]] = []
    while any(d < len(m.rows) for d, m in zip(done, schedule, strict=True)):
        progressed = False
        for index, member in enumerate(schedule):
            while done[index] < len(member.rows):
                row = member.rows[done[index]]
                if row.donor:
                    if row.donor not in names:
                        raise ReplayError(f"{member.name} took its state from unknown trial {row.donor}")
                    if (row.donor, row.donor_epoch) not in ready:
                        break
                order.append((index, done[index]))
                ready.add((member.name, row.epoch))  # members checkpoint every epoch
                done[index] += 1
                progressed = True
        if not progressed:
            waiting = [
                f"{m.name} for {m.rows[d].donor}@{m.rows[d].donor_epoch}"
                for d, m in zip(done, schedule, strict=True)
                if d < len(m.rows)
            ]
            raise ReplayError(f"the exploits wait on each other ({'; '.join(waiting)})")
    return order


def _train_batches(pixels: np.ndarray, labels: np.ndarray, batch_size: int, seed: int) -> Any:
    order = np.random.default_rng(seed).permutation(len(pixels))
    collate = D4Collate(seed=seed)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield collate({PIXELS_COLUMN: pixels[rows], LABEL_COLUMN: labels[rows]})


def _eval_batches(pixels: np.ndarray, labels: np.ndarray) -> Any:
    for start in range(0, len(pixels), EVAL_BATCH_SIZE):
        yield {
            PIXELS_COLUMN: torch.from_numpy(pixels[start : start + EVAL_BATCH_SIZE]),
            LABEL_COLUMN: torch.from_numpy(labels[start : start + EVAL_BATCH_SIZE]),
        }


def plain_pbt(dataset: PatchDataset, base: TrainConfig, schedule: list[Member], threads: int = CPUS) -> dict[str, Any]:
    """Train the schedule in this process and evaluate the best member (by last ``val_acc``) on the test split.

    Args:
        dataset: The dataset.
        base: Settings shared by all members (``lr`` and ``grad_clip`` come from each row).
        schedule: The members and their epochs.
        threads: Torch threads.

    Returns:
        ``wall`` seconds (normalisation, training, test evaluation), ``epochs`` trained, the members'
        ``diverged`` flags at the end, the best member's ``name``, ``val_acc`` and test ``accuracy``, and every
        member's test accuracy (``member_accuracies``, evaluated after ``wall`` was taken).
    """
    order = plan(schedule)
    started = time.perf_counter()
    torch.set_num_threads(threads)
    pixels = dataset.train.pixels.astype(np.float64)  # (N, C, H, W); the statistics the job streams, in memory
    stats = BandStats(pixels.mean(axis=(0, 2, 3)), np.maximum(pixels.std(axis=(0, 2, 3)), MIN_STD))
    train_x, train_y = normalise(dataset.train.pixels, stats), dataset.train.labels.astype(np.int64)
    val_x, val_y = normalise(dataset.val.pixels, stats), dataset.val.labels.astype(np.int64)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=base.label_smoothing)
    eval_loss_fn = nn.CrossEntropyLoss()
    device = torch.device("cpu")
    states: dict[tuple[str, int], tuple[dict, dict]] = {}
    for member in schedule:
        torch.manual_seed(base.seed)  # as every Ray worker does: all members start from the same weights
        member.model, _ = build_model(dataset.metadata, base)
        member.optimizer = build_optimizer(member.model, base)
    for index, row_index in order:
        member = schedule[index]
        row = member.rows[row_index]
        cfg = base.replace(lr=row.lr, grad_clip=row.grad_clip)
        if row.donor:
            model_state, optimizer_state = states[(row.donor, row.donor_epoch)]
            member.model.load_state_dict(model_state)
            member.optimizer.load_state_dict(optimizer_state)
        apply_to_optimizer(member.optimizer, cfg)
        batches = _train_batches(train_x, train_y, cfg.batch_size, cfg.seed * 1_000_003 + row.epoch)
        sums = train_epoch(member.model, member.optimizer, loss_fn, batches, cfg.clip_norm, device)
        val_loss, val_count, confusion = evaluate_shard(
            member.model, eval_loss_fn, _eval_batches(val_x, val_y), dataset.metadata.num_classes, 0, 1
        )
        member.last = epoch_metrics(row.epoch, sums, val_loss, val_count, confusion, cfg)
        # Every epoch, as the members checkpoint every epoch.
        states[(member.name, row.epoch)] = (
            copy.deepcopy(member.model.state_dict()),
            copy.deepcopy(member.optimizer.state_dict()),
        )
    best = max(schedule, key=lambda m: (not m.last["diverged"], m.last["val_acc"]))
    probabilities = predict_probabilities(best.model, dataset.test.pixels, stats)
    accuracy = float((probabilities.argmax(axis=1) == dataset.test.labels).mean())
    wall = time.perf_counter() - started
    member_accuracies = [
        float((predict_probabilities(m.model, dataset.test.pixels, stats).argmax(axis=1) == dataset.test.labels).mean())
        for m in schedule
    ]
    return {
        "wall": wall,
        "epochs": len(order),
        "diverged": [bool(m.last["diverged"]) for m in schedule],
        "name": best.name,
        "val_acc": best.last["val_acc"],
        "accuracy": accuracy,
        "member_accuracies": member_accuracies,
    }


def build_parser() -> argparse.ArgumentParser:
    """Flags of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="run the job with --smoke-test (2 members x 4 epochs)")
    parser.add_argument("--results", type=Path, default=None, help="the job's results folder (default: a temp one)")
    parser.add_argument("--overwrite", action="store_true", help="allow a --results folder that holds a job")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the job, then the plain loop, and print the figures; returns the exit code."""
    args = build_parser().parse_args(argv)
    load_average = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # other processes skew every figure
    print(f"CPUs {os.cpu_count()}, Ray cluster {CPUS} CPUs, load average at start {load_average}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pbt-bench-") as tmp:
        results = (args.results or Path(tmp) / "experiment").resolve()
        job = ExperimentConfig(results=str(results), smoke_test=args.quick, overwrite=args.overwrite)
        started = time.perf_counter()
        start_ray()
        startup = time.perf_counter() - started
        try:
            started = time.perf_counter()
            outcome = tune_experiment(job)
            print(format_outcome(outcome))
            ray_wall = time.perf_counter() - started
        finally:
            ray.shutdown()
        # The job's effective settings (the smoke test's sizes applied), its test metrics and pbt.json.
        job_args, test_metrics, record = outcome.config, outcome.metrics, outcome.record

    members = initial_population(
        job_args.population,
        PopulationOptions(unstable=not job_args.stable_start, lr_range=tuple(job_args.initial_lr_range)),
    )
    base = job_args.training
    interval = job_args.perturbation_interval
    try:
        schedule = schedule_from_record(record, members)
        plan(schedule)
        replay = f"replayed {sum(len(t['exploits']) for t in record['trials'].values())} exploit(s) from pbt.json"
    except ReplayError as err:
        schedule = initial_schedule(members, base.epochs)
        replay = f"exploits NOT replayed ({err}); initial settings for all epochs"
    dataset = read_dataset(job_args.data)
    print(f"\nplain loop: {len(schedule)} members, {replay}, torch threads {CPUS}", flush=True)
    plain = plain_pbt(dataset, base, schedule)

    ray_diverged = sum(1 for t in record["trials"].values() if t["final"]["diverged"])
    ray_epochs = sum(len(t["history"]) for t in record["trials"].values())
    ratio = ray_wall / plain["wall"]
    print()
    print(
        f"PBT job: {job_args.population} members x {base.epochs} epochs, perturbation every {interval}, "
        f"width {base.channels}"
    )
    print(f"{'':<44}{'Ray (tune.py)':>16}{'plain PyTorch':>16}")
    print(f"{'wall seconds':<44}{ray_wall:>16.1f}{plain['wall']:>16.1f}")
    print(f"{'member-epochs trained':<44}{ray_epochs:>16d}{plain['epochs']:>16d}")
    print(f"{'best member test accuracy':<44}{test_metrics['accuracy']:>16.4f}{plain['accuracy']:>16.4f}")
    print(f"{'members diverged at the end':<44}{ray_diverged:>16d}{sum(plain['diverged']):>16d}")
    print(
        f"Ray cluster start-up (not in the Ray wall time): {startup:.1f} s; Tune fit alone: "
        f"{test_metrics['wall_seconds']:.1f} s"
    )
    print(
        f"ratio Ray / plain wall time: {ratio:.2f}x (target <= {TARGET_RATIO:g}x, goal {GOAL_RATIO:g}x); "
        f"Tune fit alone / plain: {test_metrics['wall_seconds'] / plain['wall']:.2f}x"
    )
    figures = exploit_figures(record)
    gaps = figures["gaps"]
    median_gap = f"{float(np.median(gaps)):.2f} s" if gaps else "-"
    print(
        f"exploits: {len(gaps)}; gap between a member's reports around an exploit: median {median_gap} "
        f"(all: {', '.join(f'{g:.2f}' for g in sorted(gaps))})"
    )
    print(
        "reports from a member's first diverged report to its exploit: "
        f"{', '.join('never' if r is None else str(r) for r in figures['recovery']) or 'no member diverged'}"
    )
    print(
        f"Train runs (worker groups) started: {figures['runs_started']} for {len(record['trials'])} members; "
        f"runs each member reported from: {figures['train_runs']}"
    )
    print(f"plain loop: {replay}")
    if args.results:
        print(f"job results in {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
