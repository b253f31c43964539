"""bench/bench_gpu.py end to end in its CPU quick mode: every section produces its rows and the JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

sys.path.insert(0, str(REPO / "bench"))
import bench_gpu  # noqa: E402

NPZ = SHARED_DATA / "adrenalmnist3d.npz"


@pytest.mark.skipif(not NPZ.is_file(), reason=f"{NPZ} not available")
def test_quick_mode_measures_every_section_on_cpu(tmp_path: Path, capsys):
    out = tmp_path / "gpu.json"
    report = bench_gpu.main(["--device", "cpu", "--quick", "--npz", str(NPZ), "--out", str(out),
                             "--models", "seed_convnext_atto", "convnext_atto", "monai_densenet121",
                             "--sections", "dwconv", "families", "e2e", "convnext"])
    assert json.loads(out.read_text(encoding="utf-8"))["families"] == report["families"]
    assert {row["layout"] for row in report["dwconv"]} == {"contiguous", "channels_last"}
    assert all(row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 for row in report["dwconv"])
    families = {row["model"]: row for row in report["families"]}
    assert set(families) == {"seed_convnext_atto", "convnext_atto", "monai_densenet121"}
    assert families["seed_convnext_atto"]["train_x_seed"] == 1.0  # ratios to baselines of the same run
    assert families["monai_densenet121"]["infer_x_densenet"] == 1.0
    assert families["convnext_atto"]["layout"] == "contiguous"  # the CPU entry of the layout table, at 32³
    convnext = report["convnext"]
    assert {(r["norm"], r["layout"]) for r in convnext} == {(n, lay) for n in bench_gpu.NORMS
                                                            for lay in bench_gpu.LAYOUTS}
    (e2e,) = report["e2e"]
    assert e2e["epochs"] == 2 and 0.0 <= e2e["data_wait_share_median"] <= 1.0 and e2e["run_s"] > 0
    printed = capsys.readouterr().out
    assert "### families" in printed and "| convnext_atto | 32 | 2 | contiguous |" in printed
