"""The registry of mutable hyperparameters: initial population, values as configured/reported, and that adding one
(``weight_decay``) is a single entry that every consumer follows."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from workflows.training.config import GRAD_CLIP, LR, TrainConfig
from workflows.training.hyperparams import (
    CLIP_CHOICES,
    MUTABLES,
    PopulationOptions,
    apply_to_optimizer,
    change_text,
    config_values,
    initial_population,
    mutation_spaces,
    reported_values,
)

REPO = Path(__file__).resolve().parents[3]


def test_initial_population_spans_stable_and_unstable():
    members = initial_population(4, PopulationOptions(unstable=True, lr_range=(3e-4, 3.0)))
    assert members[0][LR] == pytest.approx(3e-4) and members[-1][LR] == pytest.approx(3.0)
    assert members[0][GRAD_CLIP] in CLIP_CHOICES and members[-1][GRAD_CLIP] is None
    stable = initial_population(4, PopulationOptions(unstable=False, lr_range=(3e-4, 3.0)))
    assert all(m[GRAD_CLIP] is not None for m in stable)


def test_off_values_travel_as_zero_and_come_back_as_none():
    cfg = TrainConfig(grad_clip=None)
    assert reported_values(cfg)[GRAD_CLIP] == 0.0
    assert config_values({LR: 0.01, GRAD_CLIP: 0.0}) == {LR: 0.01, GRAD_CLIP: None}
    assert "grad_clip off -> 5" in change_text({LR: 3.0, GRAD_CLIP: 0.0}, {LR: 1e-3, GRAD_CLIP: 5.0})


def test_mutated_values_are_reapplied_after_an_optimizer_state_load():
    model = torch.nn.Linear(3, 2)
    donor = torch.optim.AdamW(model.parameters(), lr=0.5)
    mine = torch.optim.AdamW(model.parameters(), lr=0.5)
    mine.load_state_dict(donor.state_dict())  # brings back the donor's lr
    apply_to_optimizer(mine, TrainConfig(lr=1e-3))
    assert all(group["lr"] == pytest.approx(1e-3) for group in mine.param_groups)


def test_the_registry_names_lr_and_grad_clip_by_default():
    assert [m.name for m in MUTABLES] == [LR, GRAD_CLIP]
    assert set(mutation_spaces()) == {LR, GRAD_CLIP}


ONE_MORE = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    from ray import tune
    import workflows.training.hyperparams as hp

    # The one-entry change: weight_decay joins the registry.
    hp.MUTABLES = hp.MUTABLES + (
        hp.Mutable("weight_decay", lambda i, n, o: 1e-4 * 10**i, tune.loguniform(1e-5, 1e-1),
                   optimizer_key="weight_decay"),
    )
    hp.NAMES = tuple(m.name for m in hp.MUTABLES)

    import numpy as np
    from workflows.training import loop
    from workflows.tuning import pbt, progress, report
    from workflows.jobs.experiment import build_pbt_record
    from workflows import tune as tune_job
    from workflows.training.config import TrainConfig

    out = {}
    members = hp.initial_population(3)
    out["initial"] = [m["weight_decay"] for m in members]
    out["mutations"] = sorted(pbt.make_scheduler(5, 0, 7, "val_acc", "max")._hyperparam_mutations)
    cfg = TrainConfig().replace(**hp.config_values({**members[2], "lr": 1e-3, "grad_clip": 5.0}))
    model = loop.build_model(
        __import__("data.format", fromlist=["x"]).PatchMetadata(("a", "b"), 4, 4, ("x", "y")), cfg
    )[0]
    optimizer = loop.build_optimizer(model, TrainConfig(weight_decay=0.5))
    hp.apply_to_optimizer(optimizer, cfg)
    out["optimizer"] = optimizer.param_groups[0]["weight_decay"]
    sums = dict(steps=1.0, skipped=0.0, norm_sum=1.0, norm_count=1.0, norm_max=1.0, loss_sum=1.0, samples=1.0)
    metrics = loop.epoch_metrics(1, sums, 1.0, 1.0, np.eye(2), cfg)
    out["reported"] = metrics["weight_decay"]
    metrics["epoch_seconds"] = 0.1
    out["line"] = progress.report_line(metrics, 10)
    rows = [dict(metrics, exploited_from="", restored_epoch=0),
            dict(metrics, epoch=2, weight_decay=0.02, exploited_from="t0", restored_epoch=1)]
    args = tune_job.build_parser().parse_args([])
    record = build_pbt_record({"t1": rows, "t0": rows[:1]}, args, "t0")
    out["record"] = [record["trials"]["t1"]["final_config"]["weight_decay"],
                     record["trials"]["t1"]["exploits"][0]["weight_decay"]]
    out["summary"] = report.format_summary(record)
    test_metrics = {"confusion_matrix": [[1, 0], [0, 1]], "class_names": ["x", "y"], "accuracy": 1.0,
                    "macro_f1": 1.0, "kappa": 1.0, "per_class": {}}
    with tempfile.TemporaryDirectory() as folder:
        written = report.write_report(record, test_metrics, folder)
        out["plot"] = Path(written[report.HYPERPARAMETER_PLOT]).stat().st_size > 0
    print(json.dumps(out))
    """
)


def test_adding_weight_decay_is_one_registry_entry(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", ONE_MORE], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert out["initial"] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert "weight_decay" in out["mutations"]
    assert out["optimizer"] == pytest.approx(1e-2)  # re-applied after the load, not the optimizer's own 0.5
    assert out["reported"] == pytest.approx(1e-2)
    assert "weight_decay 0.01" in out["line"]
    assert out["record"] == pytest.approx([0.02, 0.02])
    assert "final weight_decay" in out["summary"]
    assert out["plot"]
