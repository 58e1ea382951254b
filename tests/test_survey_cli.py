"""Command line: python -m helpers.survey cache ..."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import apogee as ap
from helpers import apogee as sc
from helpers.survey import cli as survey

REPO = Path(__file__).resolve().parents[1]


def _mirror(root, release, n=4):
    elems = list(ap.DR16_ELEM_SYMBOL) if release == "dr16" else list(ap.RSCA_ELEMENTS)[::-1]
    rng = np.random.default_rng(3)
    ids = np.array([f"2M{i:08d}-0000001" for i in range(n)])
    x_h = rng.normal(0, 0.1, (n, len(elems))).astype(np.float32)
    tab = {"APOGEE_ID": ids, "TELESCOPE": np.array(["apo25m"] * n),
           "FIELD": np.array(["120+12"] * n),
           "TEFF": np.array([4500.0, 4600, 6000, 4700][:n]),  # row 2 is too hot for RSCA
           "LOGG": np.full(n, 2.0), "FE_H": x_h[:, elems.index("Fe")],
           "X_H": x_h, "ASPCAPFLAG": np.zeros(n, np.int64)}
    ap.write_allstar(ap.allstar_path(root, release), tab, elems, release)
    flux = np.where(ap.chip_mask(), 1.0, 0.0)
    for i in ids:
        ap.write_aspcapstar(ap.aspcapstar_path(root, release, "apo25m", "120+12", i),
                            flux, flux * 0.01, flux, apogee_id=i)
    return ids


def test_every_option_has_help():
    parser = survey.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "cache" in sub.choices
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help and len(action.help.split()) >= 2, (name, action.dest)
    names = {o for a in sub.choices["cache"]._actions for o in a.option_strings}
    assert {"--apogee-root", "--release", "--allstar", "--out", "--skip-bad", "--jobs",
            "--limit"} <= names


@pytest.mark.parametrize("release", ["dr16", "dr17"])
def test_cache_command(tmp_path, release, capsys):
    ids = _mirror(tmp_path / "sas", release)
    out = tmp_path / "cache"
    rc = survey.main(["cache", "--apogee-root", str(tmp_path / "sas"), "--release", release,
                      "--out", str(out), "--jobs", "1", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_stars"] == 3
    c = sc.load_spectra_cache(out)
    assert c.apogee_ids.tolist() == [ids[0], ids[1], ids[3]]
    assert c.manifest["release"] == release
    rc = survey.main(["cache", "--apogee-root", str(tmp_path / "sas"), "--release", release,
                      "--out", str(tmp_path / "c2"), "--jobs", "1", "--no-progress",
                      "--selection", "all", "--limit", "2"])
    assert rc == 0 and sc.load_spectra_cache(tmp_path / "c2").apogee_ids.tolist() == \
        ids[:2].tolist()


def test_cache_command_bad_file(tmp_path, capsys):
    ids = _mirror(tmp_path / "sas", "dr16")
    ap.aspcapstar_path(tmp_path / "sas", "dr16", "apo25m", "120+12", ids[1]).unlink()
    args = ["cache", "--apogee-root", str(tmp_path / "sas"), "--release", "dr16",
            "--out", str(tmp_path / "cache"), "--jobs", "1", "--no-progress"]
    assert survey.main(args) == 2
    err = capsys.readouterr().err
    assert f"aspcapStar-r12-{ids[1]}.fits" in err and "not found" in err
    assert not (tmp_path / "cache").exists()
    assert survey.main(args + ["--skip-bad"]) == 0
    assert ids[1] in capsys.readouterr().err
    assert len(sc.load_spectra_cache(tmp_path / "cache").skipped) == 1


def test_missing_allstar(tmp_path, capsys):
    rc = survey.main(["cache", "--apogee-root", str(tmp_path), "--release", "dr17",
                      "--out", str(tmp_path / "c"), "--no-progress"])
    assert rc == 2 and "allStar-dr17-synspec_rev1.fits" in capsys.readouterr().err


def test_help_runs_as_module():
    r = subprocess.run([sys.executable, "-m", "helpers.survey", "cache", "--help"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and "--apogee-root" in r.stdout and "--skip-bad" in r.stdout


_SLOW_BUILD = """
import sys, time
from helpers.apogee import cache_builder as sc
import pandas as pd
real = sc._read_batch
def slow(*args):
    time.sleep(0.3)
    return real(*args)
sc._read_batch = slow
df = pd.read_json(sys.argv[1])
sc.build_spectra_cache(df, sys.argv[2], paths=list(df.PATH), n_jobs=1, batch_size=1,
                       progress=False)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_build_is_never_read_as_complete(tmp_path):
    ids = _mirror(tmp_path / "sas", "dr16", n=4)
    df = pd.DataFrame({"APOGEE_ID": ids, "PATH": [
        str(ap.aspcapstar_path(tmp_path / "sas", "dr16", "apo25m", "120+12", i))
        for i in ids]})
    (tmp_path / "cat.json").write_text(df.to_json())
    out = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(tmp_path / "cat.json"),
                             str(out)], env=env, cwd=REPO)
    deadline = time.time() + 30
    while not list(tmp_path.glob(".cache.building-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(tmp_path.glob(".cache.building-*")), "the build never started"
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="interrupted build"):
        sc.load_spectra_cache(out)
    # the next build succeeds and removes the dead build's leftovers
    c = sc.build_spectra_cache(df, out, paths=list(df.PATH), n_jobs=1, progress=False)
    assert len(c) == 4 and not list(tmp_path.glob(".cache.building-*"))


def test_generate_small_survey(tmp_path, capsys):
    """The command a new user tries first works: the twins scale with the survey."""
    from helpers.survey import load_survey
    out = tmp_path / "survey"
    rc = survey.main(["generate", "--n-field", "600", "--seed", "3", "--out", str(out),
                      "--no-progress", "--n-files", "5"])
    assert rc == 0, capsys.readouterr().err
    s = load_survey(out)
    assert s.manifest["n_jwst"] == round(19_000 * 600 / 238_400)
    assert s.jwst["flux"].shape[0] == s.jwst["error"].shape[0] == s.manifest["n_jwst"]


@pytest.mark.parametrize("args,names", [
    (["--jwst-resolution", "50000"], "jwst_resolution"),
    (["--jwst-wmax", "25000"], "jwst_wmax"),
    (["--jwst-gap", "sideways"], "jwst-gap"),
    (["--n-jwst", "5000"], "n_jwst"),
    (["--n-field", "0"], "n_field"),
    (["--n-field", "200"], "n_field"),            # too few field stars for the clusters
])
def test_generate_errors_are_one_clear_line(tmp_path, capsys, args, names):
    argv = ["generate", "--n-field", "600", "--out", str(tmp_path / "s"), "--no-progress"]
    rc = survey.main(argv + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error:") and names in err[0], err
    assert not (tmp_path / "s").exists()


def test_generate_refuses_a_folder_that_is_not_a_survey(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    rc = survey.main(["generate", "--n-field", "600", "--out", str(tmp_path / "s"),
                      "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a synthetic survey" in err[0]
