"""Population-based training: the long-lived member (a Tune class ``Trainable``), its search and its scheduler.

Ray 2.60's ``TorchTrainer`` is Train V2 and cannot be handed to a ``Tuner``. Each PBT member is a class
``Trainable`` that starts one ``TorchTrainer`` (:class:`workflows.training.launch.MemberRun`) in
:meth:`PBTMember.setup` and
keeps it: :meth:`~PBTMember.step` trains one epoch, :meth:`~PBTMember.save_checkpoint` copies the epoch's checkpoint
for Tune, and an exploit (Tune calls ``reset_config`` with the mutated values, then ``load_checkpoint`` with the
donor's checkpoint) only tells the waiting workers to load the donor's state and train on with the new values.

Tune reuses a paused member's process (``reuse_actors=True``) only while its search may still hand out trials, so
the search (:class:`workflows.tuning.tune_private.PopulationSearch`) stays open until every member has ended. A member
whose process Tune did not keep starts a new ``TorchTrainer`` from the checkpoint: slower, still correct.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ray import tune

from data.format import PatchMetadata
from data.pipeline import BandStats
from data.storage import Location, locate
from workflows.training.config import TrainConfig
from workflows.training.hyperparams import config_values, mutation_spaces
from workflows.training.launch import MemberRun, RunInputs, unique_run_name
from workflows.tuning.tune_private import RecoveringPBT, quiet_member_logs

log = logging.getLogger(__name__)

TIME_ATTR = "epoch"
# Written into each checkpoint the member hands to Tune, so a member restored from it knows its donor.
OWNER_FILE = "owner.json"
MEMBER_LOG_SUFFIX = ".jsonl"
# Config key of a member's index in the population.
MEMBER_KEY = "member"
# A member at or below this multiple of chance (1 / number of classes) after its first interval is stuck, as much
# in need of rescue as a diverged one (a member that diverged and stopped skipping steps validates near chance).
STUCK_CHANCE_FACTOR = 1.5


def make_scheduler(perturbation_interval: int, seed: int, num_classes: int, metric: str, mode: str) -> RecoveringPBT:
    """The PBT scheduler over the registry's mutable hyperparameters, perturbing every ``perturbation_interval``."""
    import random

    random.seed(seed)  # PBT draws donors and mutations from the module-level random state
    return RecoveringPBT(
        time_attr=TIME_ATTR,
        metric=metric,
        mode=mode,
        perturbation_interval=perturbation_interval,
        # Half the population: with 4 members, one slow-to-recover member could otherwise hold the single
        # bottom slot while another stuck member was never compared against it.
        quantile_fraction=0.5,
        resample_probability=0.25,
        hyperparam_mutations=mutation_spaces(),
        # Chance level is a floor of accuracy only.
        stuck_below=STUCK_CHANCE_FACTOR / num_classes if (metric, mode) == ("val_acc", "max") else None,
    )


def _owner(checkpoint_dir: str | Path) -> dict[str, Any]:
    path = Path(checkpoint_dir) / OWNER_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


class PBTMember(tune.Trainable):
    """One PBT member for the whole experiment: one ``TorchTrainer``, one epoch per step (see the module docstring).

    Tune passes ``setup`` the member's config (its mutable values) and, through ``tune.with_parameters``: ``base``
    (the shared :class:`TrainConfig`), ``metadata`` (the dataset's), ``stats`` (band statistics), ``datasets`` (the Ray
    datasets shared by all members), ``storage_path`` (where the members' Train runs keep their checkpoints) and
    ``log_dir`` (the members' report logs: one JSON line per report, kept across exploits).
    """

    def setup(
        self,
        config: dict[str, Any],
        base: TrainConfig,
        metadata: PatchMetadata,
        stats: BandStats,
        datasets: dict[str, Any],
        storage_path: str,
        log_dir: str,
    ) -> None:
        """Start the member's ``TorchTrainer`` with its initial values (see the class docstring for the arguments)."""
        quiet_member_logs()
        self.base = base
        self.runs = locate(storage_path)  # where the member's Train runs keep their checkpoints
        self.logs = locate(log_dir)
        self.hyper = config_values(config)
        self.pending_load: str | None = None
        self.fresh = False
        self.donor: dict[str, Any] = {}
        self.latest: str | None = None
        self.latest_epoch = 0
        self.holds = self.trial_id  # whose training state the run holds
        self.loads = 0
        inputs = RunInputs(
            config=self.base.replace(**self.hyper),
            metadata=metadata,
            stats=stats,
            datasets=datasets,
            storage_path=storage_path,
            name=unique_run_name(f"member-{self.trial_id}"),
        )
        self.member = MemberRun(inputs, owner=f"{log_dir}/{self.trial_id}")

    def step(self) -> dict[str, Any]:
        """Train one epoch; the result is the epoch's report, logged in the member's file."""
        load, self.pending_load = self.pending_load, None
        metrics, self.latest = self.member.step(self.hyper, load=load, fresh=self.fresh)
        self.fresh = False
        self.latest_epoch = int(metrics["epoch"])
        if load is not None:
            shutil.rmtree(load, ignore_errors=True)
        # train_run: the member's Train run, the same for the whole experiment unless Tune replaced the process.
        metrics = dict(metrics, trial_id=self.trial_id, reported_at=time.time(), train_run=self.member.run.name)
        metrics["exploited_from"] = self.donor.get("trial", "")
        metrics["restored_epoch"] = int(self.donor.get("epoch", 0)) if self.donor else 0
        self.donor = {}
        # Tune rewrites a member's result history when it restores a donor's checkpoint; this log keeps it all.
        append_report(self.logs.join(f"{self.trial_id}{MEMBER_LOG_SUFFIX}"), metrics)  # trial_id: the current one
        metrics[tune.result.DONE] = self.latest_epoch >= self.base.epochs
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Copy the latest epoch's checkpoint (the workers wait for a command, so it is current) for Tune."""
        if self.latest is None:
            raise RuntimeError(f"{self.trial_id}: asked for a checkpoint before the first epoch")
        self.runs.at(self.latest).download(checkpoint_dir)
        owner = {"trial": self.trial_id, "epoch": self.latest_epoch}
        (Path(checkpoint_dir) / OWNER_FILE).write_text(json.dumps(owner))

    def load_checkpoint(self, checkpoint: str) -> None:
        """Have the workers load ``checkpoint`` before the next epoch (a copy: Tune's folder may be temporary)."""
        self.loads += 1
        copy = self.member.control / f"load-{self.loads:06d}"
        shutil.copytree(checkpoint, copy)
        self.pending_load = str(copy)
        self.fresh = False
        self.holds = self.trial_id
        owner = _owner(checkpoint)
        # Its own checkpoint means a resumed experiment or a retried failure, not an exploit.
        self.donor = owner if owner.get("trial") not in (None, self.trial_id) else {}
        if self.donor:
            log.info("member %s continues %s's epoch-%s checkpoint", self.trial_id, owner["trial"], owner.get("epoch"))

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Take the (mutated) values; the run and its workers stay. Tune calls ``load_checkpoint`` next, if any."""
        self.hyper = config_values(new_config)
        if self.trial_id != self.holds:
            self.fresh = True  # another trial's process, handed to a trial that starts from scratch
            self.holds = self.trial_id
        return True

    def cleanup(self) -> None:
        """Stop the member's run and free its workers."""
        self.member.stop()


def append_report(log: Location, report: dict[str, Any]) -> None:
    """Add one report to a member's log (a JSON line per report, kept across exploits and resumes).

    On a local disk (or a shared mount) the line is appended; an object store cannot append, so there the log is read
    and written again whole (a few KB: one line an epoch).
    """
    line = json.dumps(report) + "\n"
    if log.local:
        Path(log.path).parent.mkdir(parents=True, exist_ok=True)
        with open(log.path, "a") as log_file:
            log_file.write(line)
        return
    before = log.read_bytes().decode() if log.exists() else ""
    log.write_bytes((before + line).encode())


def read_member_logs(log_dir: Location) -> dict[str, list[dict[str, Any]]]:
    """Every member's reports, in order, by trial id."""
    return {
        name.removesuffix(MEMBER_LOG_SUFFIX): [
            json.loads(line) for line in log_dir.join(name).read_bytes().decode().splitlines() if line
        ]
        for name in log_dir.names()
        if name.endswith(MEMBER_LOG_SUFFIX)
    }


def remove_train_runs(storage: Location) -> None:
    """Delete the members' own Train run folders (Tune keeps copies of the checkpoints it needs)."""
    storage.delete()


# Tune names each member's folder in the experiment's tune/ folder after the trainable class.
TRIAL_FOLDER_GLOB = f"{PBTMember.__name__}_*"
