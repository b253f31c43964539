"""Interruptions say how to continue; one writer per run folder; unwritable outputs refused before any work."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from bad_inputs import good_dataset
from conftest import one_line
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.rundir import LOCK, RunLock

runner = CliRunner()
TINY = ["--model", "convmixer_128_4", "--set", "model.args.dim=8", "--set", "model.args.depth=1", "--device", "cpu",
        "--batch-size", "4"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_says_resume_and_a_rerun_says_resume_not_overwrite(tmp_path, sig, code):
    data = good_dataset(tmp_path / "data")
    out = tmp_path / "run"
    command = ["train", "--data", str(data), "--out", str(out), *TINY, "--epochs", "500"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a test run started in the background (`cmd &`, nohup) passes SIGINT on as ignored, and Python then keeps
    # ignoring it: the child gets the default disposition, as from an interactive shell
    proc = subprocess.Popen([sys.executable, "-m", "medconvnext", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120  # generous: a loaded CI machine imports torch slowly
    while time.monotonic() < deadline and not (out / "metrics.jsonl").is_file():  # after its first epoch
        time.sleep(0.1)
    assert (out / "metrics.jsonl").is_file(), "the run did not finish an epoch in time"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)  # shutting down can take a while on a loaded machine
    assert proc.returncode == code, stderr
    assert f"continue with `medconvnext train --resume {out}`" in stderr
    assert not (out / LOCK).exists()  # released on the way out
    again = runner.invoke(app, command)
    assert again.exit_code == 2
    line = one_line(again.output)
    assert f"medconvnext train --resume {out}" in line and "--overwrite" not in line


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    data = good_dataset(tmp_path / "data")
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY, "--epochs", "1"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with RunLock(out):  # this test process is the first writer, alive
        for command in (["train", "--data", str(data), "--out", str(out), *TINY, "--epochs", "1", "--overwrite"],
                        ["train", "--resume", str(out), "--epochs", "2"],
                        ["cv", "--data", str(data), "--out", str(out), *TINY, "--epochs", "1", "--folds", "2",
                         "--overwrite"]):
            result = runner.invoke(app, command)
            assert result.exit_code == 2, result.output
            assert f"in use by process {os.getpid()} on {socket.gethostname()}" in one_line(result.output)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK} == before
    assert not (out / LOCK).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    data = good_dataset(tmp_path / "data")
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now
    out.mkdir()
    (out / LOCK).write_text(f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "started": "x"}}',
                            encoding="utf-8")
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TINY, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert not (out / LOCK).exists() and (out / "checkpoint_best.safetensors").is_file()


def _unwritable(tmp_path):
    """A folder this process cannot write in: a read-only folder, or for root (who ignores modes) /sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if os.access("/sys", os.W_OK) and _can_create("/sys"):
        pytest.skip("no unwritable folder on this machine")
    return "/sys"


def _can_create(folder: str) -> bool:
    try:
        with open(os.path.join(folder, ".medconvnext-test"), "w"):
            pass
    except OSError:
        return False
    os.unlink(os.path.join(folder, ".medconvnext-test"))
    return True


@pytest.mark.parametrize("command", ["train", "cv", "predict"])
def test_an_unwritable_output_is_refused_before_any_work(tmp_path, command):
    from helpers_predict import make_checkpoint

    data = good_dataset(tmp_path / "data")
    target = f"{_unwritable(tmp_path)}/medconvnext_out"
    if command == "predict":
        model = make_checkpoint(tmp_path / "m" / "checkpoint_best.safetensors").parent
        args = ["predict", str(data / "img" / "c00.nii.gz"), "--model", str(model), "--output", target + ".csv"]
    else:
        args = [command, "--data", str(data), "--out", target, *TINY, "--epochs", "1",
                *(["--folds", "2"] if command == "cv" else [])]
    started = time.monotonic()
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "cannot write in" in one_line(result.output)
    assert time.monotonic() - started < 10  # refused at once, not after training or predicting
