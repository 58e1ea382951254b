"""The papermill sweep command (book/sweeps.md) on a tiny chapter."""

import json

import pandas as pd
import pytest

from helpers.sweep import grid_points, main, point_id, run_sweep


def test_grid_points():
    pts = grid_points({"K": [1, 2]}, seeds=[0, 1])
    assert pts == [{"K": 1, "seed": 0}, {"K": 1, "seed": 1}, {"K": 2, "seed": 0}, {"K": 2, "seed": 1}]
    with pytest.raises(ValueError, match="not both"):
        grid_points({"seed": [1]}, seeds=[2])


def test_sweep_table_resume_and_failure(tiny, tmp_path):
    out = tmp_path / "out"
    # K = 2 (not the chapter's default 1) shows the value reaching the chapter; K = 3 fails
    table = run_sweep(tiny, {"K": [2, 3]}, seeds=[0, 1], out=out, jobs=2, progress=False)
    assert len(table) == 4
    ok = table[table.status == "ok"]
    assert ok["square"].astype(int).tolist() == [4, 4]
    assert sorted(ok["seed_plus"].astype(int).tolist()) == [100, 101]
    failed = table[table.status == "error"]
    assert len(failed) == 2 and failed["error"].str.contains("broken on purpose").all()
    assert (out / "results.csv").exists()
    assert len(pd.read_csv(out / "results.csv")) == 4

    # a rerun skips the finished points (their executed notebooks are left untouched)
    done = out / "points" / f"{point_id(tiny, {'K': 2, 'seed': 0})}.ipynb"
    stamp = done.stat().st_mtime_ns
    again = run_sweep(tiny, {"K": [2, 3]}, seeds=[0, 1], out=out, jobs=2, progress=False)
    assert done.stat().st_mtime_ns == stamp
    assert again.drop(columns=["seconds", "error"]).equals(table.drop(columns=["seconds", "error"]))


def test_unknown_parameter_is_named(tiny, tmp_path):
    with pytest.raises(ValueError, match="no parameter"):
        run_sweep(tiny, {"nope": [1]}, out=tmp_path / "o", progress=False)


def test_command_line_exit_code(tiny, tmp_path, capsys):
    assert main([str(tiny), "-p", "K", "2", "--out", str(tmp_path / "cli"), "--jobs", "1"]) == 0
    rec = json.loads(next((tmp_path / "cli" / "points").glob("*.json")).read_text())
    assert rec["results"]["square"] == 4
    assert main([str(tiny), "-p", "K", "3", "--out", str(tmp_path / "cli2"), "--jobs", "1"]) == 1


def test_relative_out_and_list_values(tiny, tmp_path, monkeypatch):
    """--out relative to the caller's folder (the chapter runs in its own); YAML list values."""
    monkeypatch.chdir(tmp_path)
    assert main([str(tiny), "-p", "K", "2", "-p", "seed", "[1, 2]", "--out", "rel", "--jobs", "1"]) == 1
    rec = json.loads(next((tmp_path / "rel" / "points").glob("*.json")).read_text())
    assert rec["params"] == {"K": 2, "seed": [1, 2]}   # one list value reached the chapter
    # the table too lands under the caller's folder (a successful point's table: the test above)
    assert pd.read_csv(tmp_path / "rel" / "results.csv").status.tolist() == ["error"]
