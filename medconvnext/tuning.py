"""Hyperparameter search with Optuna: each trial a normal ``train`` run (or a K-fold ``cv``), resumable.

Optuna is optional (``pip install 'medconvnext[tune]'``) and imported only by :func:`tune`.

- The study lives in ``<out>/study.db`` (SQLite), so rerunning the same command continues it: ``trials`` is the
  number of finished (complete or pruned) trials wanted in total, and only the missing ones run.
- Trial ``n`` trains into ``<out>/trial_<n>``; its objective is the best validation AUC of the run (``cv``: the
  pooled out-of-fold AUC).
- Plain trials report the validation AUC of every epoch; Optuna's median pruner stops a trial whose AUC is
  below the median of earlier trials at the same epoch (after 3 complete trials and 2 epochs). Cross-validated
  trials are not pruned (their epochs restart with every fold).
- ``<out>/best_config.yaml`` is the resolved config of the best trial, for ``medconvnext train --config``.

The search space is a YAML mapping from a dotted config field to a distribution::

    train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    train.ema: {type: categorical, choices: [false, true]}
    model.name: {type: categorical, choices: [convnext_atto, convnext_femto]}
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medconvnext.config import Config, apply_overrides, load_yaml, save_config
from medconvnext.errors import UserError
from medconvnext.fileio import MANIFEST, read_manifest, record, start_manifest
from medconvnext.rundir import LOCK, RunLock, check_writable

__all__ = ["DEFAULT_SPACE", "TrialRow", "TuneResult", "load_space", "tune"]

# the recipe's main knobs, around the defaults of TrainConfig / ModelConfig
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
    "train.weight_decay": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
    "train.drop_path_rate": {"type": "float", "low": 0.0, "high": 0.3},
    "train.ema": {"type": "categorical", "choices": [False, True]},
    "data.augment": {"type": "categorical", "choices": ["light", "medium", "heavy"]},
    "model.name": {"type": "categorical", "choices": ["convnext_atto", "convnext_femto", "convnext_pico"]},
}
STUDY_FILE = "study.db"
BEST_CONFIG = "best_config.yaml"
TYPES = ("float", "int", "categorical")


@dataclass
class TrialRow:
    """One trial, for the table: number, state (COMPLETE, PRUNED, FAIL, RUNNING), value, params, run folder."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_dir: str | None
    epochs: int | None = None  # epochs reported before it ended (plain trials)


@dataclass
class TuneResult:
    out: Path
    trials: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    best_config: Path | None = None


def load_space(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The search space of a YAML file (None: :data:`DEFAULT_SPACE`), checked against the config.

    Raises:
        UserError: the file is unreadable, or an entry names an unknown field or a bad distribution.
    """
    if path is None:
        return copy.deepcopy(DEFAULT_SPACE)
    path = Path(path)
    try:
        space = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--space {path}: cannot read ({exc})") from None
    if not isinstance(space, dict) or not space:
        raise UserError(f"--space {path}: expected a mapping of config field -> distribution")
    for name, spec in space.items():
        where = f"--space {path}: {name}"
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise UserError(f"{where}: needs type: one of {', '.join(TYPES)}")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise UserError(f"{where}: categorical needs a non-empty list 'choices'")
            values = spec["choices"]
        else:
            if not all(isinstance(spec.get(k), (int, float)) for k in ("low", "high")) or spec["low"] > spec["high"]:
                raise UserError(f"{where}: {spec['type']} needs numbers low <= high")
            values = [spec["low"], spec["high"]]
        for value in values:  # every value must be valid for the field (an unknown field fails here too)
            apply_overrides(Config(), {name: value}, where)
    return space


def _suggest(trial: Any, name: str, spec: dict[str, Any]) -> Any:
    if spec["type"] == "float":
        return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
    if spec["type"] == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
    return trial.suggest_categorical(name, spec["choices"])


class _Pruning:
    """Trainer callbacks that report each epoch's validation AUC to the trial and stop it when Optuna says so."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        pass

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        import optuna

        if record.get("val_auc") is None:
            return
        self.trial.report(float(record["val_auc"]), int(record["epoch"]))
        self.trial.set_user_attr("epochs", int(record["epoch"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation AUC {record['val_auc']:.3f} at epoch {record['epoch']} is below "
                                     "the median of earlier trials")


def tune(
    config: Config,
    out: str | Path,
    trials: int,
    space: dict[str, dict[str, Any]] | None = None,
    cv: int | None = None,
    callbacks: Callable[[], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run (or continue) a study on ``config`` until ``trials`` trials have finished; see the module docstring.

    Args:
        callbacks: makes the trainer callbacks of one trial (e.g. a progress bar); pruning is added to them.
        log: receives one line per trial.

    Raises:
        UserError: optuna is not installed, ``trials`` < 1, or ``cv`` < 2.
    """
    try:
        import optuna
    except ImportError:
        raise UserError("medconvnext tune needs optuna (pip install 'medconvnext[tune]')") from None
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    if cv is not None and cv < 2:
        raise UserError(f"--cv must be >= 2, got {cv}")
    if not config.data.path:
        raise UserError("data.path is not set: pass --data DIR")
    space = space if space is not None else copy.deepcopy(DEFAULT_SPACE)
    log = log or (lambda line: None)
    out = Path(out)
    _check_out(out)
    with RunLock(out):  # one writer per study
        start_manifest(out, "tune")  # trial_<n>/ runs register with it; --overwrite of a trial deletes only its files
        try:
            return _study(optuna, config, out, trials, space, cv, callbacks, log)
        finally:
            record(out / STUDY_FILE)  # optuna writes it as it goes: recorded as it stands when the study stops


def _check_out(out: Path) -> None:
    """Before any work: ``out`` is new, empty, or an earlier study (its manifest), which is continued."""
    check_writable(out, "--out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose a new or empty folder")
    manifest = read_manifest(out)
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and (manifest or {}).get("kind") != "tune":
        raise UserError(f"--out {out}: not empty and not a medconvnext study (no {MANIFEST} of one); medconvnext "
                        "never writes into a folder of other files: choose a new or empty folder")


def _study(optuna: Any, config: Config, out: Path, trials: int, space: dict[str, dict[str, Any]], cv: int | None,
           callbacks: Callable[[], Any] | None, log: Callable[[str], None]) -> TuneResult:
    from medconvnext.engine.trainer import train
    from medconvnext.tracking import CallbackGroup

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out / STUDY_FILE).resolve()}"
    study = optuna.create_study(
        study_name="medconvnext", storage=storage, load_if_exists=True, direction="maximize",
        # a new seed per invocation: a resumed study must not replay the first trials' samples
        sampler=optuna.samplers.TPESampler(seed=config.train.seed + len(_existing(storage))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )
    finished = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                   for t in study.trials)

    def objective(trial: Any) -> float:
        cfg = copy.deepcopy(config)
        params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
        apply_overrides(cfg, params, "search space")
        run_dir = out / f"trial_{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        user = callbacks() if callbacks is not None else None
        if cv is None:
            result = train(cfg, run_dir, overwrite=True, callbacks=CallbackGroup(user, _Pruning(trial)))
            value = result.best_metrics.get("val_auc")
        else:
            from medconvnext.engine.cv import cross_validate

            value = cross_validate(cfg, run_dir, folds=cv, overwrite=True, callbacks=user, n_boot=0
                                   ).summary["pooled"]["auc"]
        log(f"trial {trial.number}: AUC {'n/a' if value is None else f'{value:.4f}'} {params}")
        return float("nan") if value is None else float(value)  # nan: Optuna records the trial as failed

    if trials > finished:
        study.optimize(objective, n_trials=trials - finished, catch=())
    rows = [_row(t) for t in study.trials]
    result = TuneResult(out, rows)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        result.best = _row(best)
        cfg = copy.deepcopy(config)
        apply_overrides(cfg, best.params, "best trial")
        result.best_config = out / BEST_CONFIG
        save_config(cfg, result.best_config)
    return result


def _existing(storage: str) -> list:
    """Trials already in the study (none when it does not exist yet)."""
    import optuna

    try:
        return optuna.load_study(study_name="medconvnext", storage=storage).trials
    except KeyError:  # no such study yet
        return []


def _row(trial: Any) -> TrialRow:
    value = trial.value if trial.state.name == "COMPLETE" else None
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    return TrialRow(trial.number, trial.state.name, value, dict(trial.params), trial.user_attrs.get("run_dir"),
                    trial.user_attrs.get("epochs"))


def space_yaml(space: dict[str, dict[str, Any]]) -> str:
    """A search space as YAML (to start a --space file from the default)."""
    return yaml.safe_dump(space, sort_keys=False)
