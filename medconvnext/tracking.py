"""Experiment tracking: training callbacks that log a run to MLflow, and a fan-out of several callbacks.

MLflow is optional (``pip install 'medconvnext[mlflow]'``) and imported only when a tracker is made.
The default store is the local folder ``./mlruns``: a SQLite database ``mlruns/mlflow.db`` with the artefacts in
``mlruns/artifacts`` (MLflow 3 puts its plain-file store in maintenance mode and refuses it by default; view
with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``). Any MLflow tracking URI works
(``sqlite:///...``, ``http://host:5000``, ``databricks``); a plain folder path means a SQLite store in it.

One :class:`MlflowTracker` per ``train``/``cv`` command: a ``train`` is one MLflow run; a ``cv`` is a parent run
with one nested run per fold (each fold's training calls ``on_plan`` when it starts).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medconvnext.choices import Tracker, choices
from medconvnext.errors import UserError
from medconvnext.rundir import RunDir

__all__ = ["CallbackGroup", "MlflowTracker", "TRACKERS", "flatten_params", "resolve_tracking_uri"]

TRACKERS = choices(Tracker)
# resume-only state (optimiser moments, RNG): large and of no use to a reader of the tracker
_SKIP_ARTIFACTS = (RunDir.training_state_file.name,)


class CallbackGroup:
    """Forward every trainer callback (``on_plan`` included, when a member has it) to each member in turn."""

    def __init__(self, *members: Any) -> None:
        self.members = [m for m in members if m is not None]

    def on_plan(self, plan: dict[str, Any]) -> None:
        for member in self.members:
            if hasattr(member, "on_plan"):
                member.on_plan(plan)

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        for member in self.members:
            member.on_start(total_epochs, steps_per_epoch)

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        for member in self.members:
            member.on_step(epoch, step, loss)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        for member in self.members:
            member.on_epoch_end(record)


def flatten_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> ``{"section.key": "value"}`` strings (MLflow params are strings of at most 6000 chars)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


def resolve_tracking_uri(uri: str | None, cwd: Path | None = None) -> tuple[str, str]:
    """(tracking URI, artefact location for a new experiment).

    None -> ``sqlite:///<cwd>/mlruns/mlflow.db`` with artefacts in ``<cwd>/mlruns/artifacts``; a plain folder
    path -> the same layout in that folder; anything with a scheme (``sqlite:``, ``http:``, ``file:``...) is used
    as it is (artefacts where that server or store puts them: empty string).
    """
    if uri is not None and "://" in uri or uri in ("databricks",):
        return uri, ""
    folder = Path(uri) if uri is not None else (cwd or Path.cwd()) / "mlruns"
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


class MlflowTracker:
    """Training callbacks that log params, per-epoch metrics and the run folder to MLflow.

    Use as a context manager around ``train``/``cross_validate`` (it ends the runs, marking them FAILED or
    KILLED when the block raises)::

        with MlflowTracker(None, "medconvnext", parent="cv", parent_dir=out) as tracker:
            cross_validate(cfg, out, callbacks=CallbackGroup(progress, tracker))

    Args:
        uri: tracking URI or folder (see :func:`resolve_tracking_uri`).
        experiment: experiment name (created when missing).
        parent: name of a parent run holding one nested run per training (``cv``); None: one run per training.
        parent_dir: folder whose top-level files (report, summary, out-of-fold predictions) are logged as the
            parent run's artefacts at the end.

    Raises:
        UserError: mlflow is not installed, or the store cannot be opened.
    """

    def __init__(self, uri: str | None, experiment: str = "medconvnext", parent: str | None = None,
                 parent_dir: Path | None = None) -> None:
        try:
            import mlflow
        except ImportError:
            raise UserError("--tracking mlflow: mlflow is not installed (pip install 'medconvnext[mlflow]')") from None
        self._mlflow = mlflow
        try:
            self.uri, artifact_location = resolve_tracking_uri(uri)
            mlflow.set_tracking_uri(self.uri)
            client = mlflow.MlflowClient(self.uri)
            found = client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found is not None else client.create_experiment(
                experiment, artifact_location=artifact_location or None)
        except Exception as exc:  # noqa: BLE001 - any store failure is a bad --tracking-uri for the user
            raise UserError(f"--tracking-uri {uri or './mlruns'}: cannot open the MLflow store ({exc})") from None
        self.parent_name, self.parent_dir = parent, parent_dir
        self.parent_id: str | None = None
        self.run_ids: list[str] = []
        self._active: Any = None  # the MLflow run of the training in progress
        self._active_dir: Path | None = None

    def __enter__(self) -> MlflowTracker:
        if self.parent_name is not None:
            run = self._mlflow.start_run(experiment_id=self.experiment_id, run_name=self.parent_name)
            self.parent_id = run.info.run_id
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        self._end_training(status)
        if self.parent_id is not None:
            if self.parent_dir is not None and Path(self.parent_dir).is_dir():
                for path in sorted(Path(self.parent_dir).iterdir()):
                    if path.is_file():
                        self._mlflow.log_artifact(str(path))
            self._mlflow.end_run(status)

    def on_plan(self, plan: dict[str, Any]) -> None:
        """A training starts: open its run and log the resolved config, the plan, the split and the model."""
        self._end_training("FINISHED")  # the previous fold of a cross-validation has finished
        run_dir = Path(plan["run_dir"])
        name = run_dir.name
        if self.parent_id is not None and self.parent_dir is not None:
            try:  # fold_0, or repeat_1/fold_0
                name = run_dir.resolve().relative_to(Path(self.parent_dir).resolve()).as_posix()
            except ValueError:
                pass
        run = self._mlflow.start_run(experiment_id=self.experiment_id, run_name=str(name),
                                     nested=self.parent_id is not None)
        self._active, self._active_dir = run, run_dir
        self.run_ids.append(run.info.run_id)
        params = flatten_params({k: v for k, v in plan["config"].items()})
        params.update(flatten_params({"plan": plan["plan"], "split": plan["split"]}))
        params.update({"model.parameters": str(plan["model"]["parameters"]), "device": plan["device"]})
        self._mlflow.log_params(params)
        self._mlflow.set_tags({"medconvnext.run_dir": str(run_dir)})

    def on_start(self, total_epochs: int, steps_per_epoch: int) -> None:
        pass

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """Every numeric value of the epoch record, at step = epoch."""
        metrics = {k: float(v) for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))
                   and not isinstance(v, bool) and math.isfinite(v)}
        if self._active is not None:
            self._mlflow.log_metrics(metrics, step=int(record["epoch"]))

    def _end_training(self, status: str) -> None:
        """Log the training's folder as artefacts and close its run."""
        if self._active is None:
            return
        if self._active_dir is not None and self._active_dir.is_dir():
            for path in sorted(self._active_dir.rglob("*")):
                if path.is_file() and path.name not in _SKIP_ARTIFACTS:
                    folder = path.parent.relative_to(self._active_dir).as_posix()
                    self._mlflow.log_artifact(str(path), artifact_path=None if folder == "." else folder)
        self._mlflow.end_run(status)
        self._active, self._active_dir = None, None
