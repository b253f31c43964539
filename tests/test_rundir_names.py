"""RunDir owns every run-file name: RUN_FILES is derived from it, writers take their names from it, and every file
a real run writes is one of them (so ``--overwrite`` never takes a file of the toolkit for the user's)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import make_dataset

import medconvnext
from medconvnext.config import Config, apply_overrides
from medconvnext.engine.trainer import SilentCallbacks, train
from medconvnext.fileio import MANIFEST
from medconvnext.reports.render import REPORT_FILES
from medconvnext.reports.run import report_run
from medconvnext.rundir import RUN_FILE_PATTERN, RUN_FILES, RunDir, is_run_file


def _unnamed(run: Path) -> list[str]:
    """Files under ``run`` whose names RunDir does not give (the manifests are fileio's)."""
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not is_run_file(p.name))


def test_run_files_are_derived_from_rundir():
    assert RUN_FILES == {f.name for f in RunDir.files()}
    assert len(RUN_FILES) == len(RunDir.files())  # no name given to two files
    root = Path("run")
    assert RunDir(root).config == root / "config.yaml" and RunDir.config.name == "config.yaml"
    assert set(REPORT_FILES.values()) <= RUN_FILES
    assert RUN_FILE_PATTERN.fullmatch(RunDir(root).checkpoint("best").name)


def test_no_module_spells_a_run_file_name():
    """Outside rundir.py no string literal of the library is a run-file name: writers ask RunDir."""
    package = Path(medconvnext.__file__).parent
    spelled = []
    for path in package.rglob("*.py"):
        if path.name == "rundir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and is_run_file(node.value):
                spelled.append(f"{path.relative_to(package)}:{node.lineno} {node.value!r}")
    assert not spelled, spelled


def test_every_file_a_train_run_and_its_report_write_is_named_by_rundir(tmp_path):
    data = make_dataset(tmp_path / "data", n=8)
    config = apply_overrides(Config(), {
        "data.path": str(data), "model.name": "convmixer_128_4", "model.args.dim": 16, "model.args.depth": 1,
        "train.epochs": 2, "train.batch_size": 4, "train.device": "cpu", "data.leakage": "off"})
    run = tmp_path / "run"
    train(config, run, callbacks=SilentCallbacks())
    report_run(run, n_boot=0)  # `medconvnext report RUN`: its files go into the run too
    written = sorted(p.name for p in run.rglob("*") if p.is_file())
    assert {"config.yaml", "checkpoint_best.safetensors", "val_predictions_tta.csv", "report.md"} <= set(written)
    assert not _unnamed(run), _unnamed(run)
