"""The spectra cache: round trip, ID check, atomicity, keys, bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers import apogee as ap
from helpers import apogee as sc
from helpers.apogee import cache_builder


def _mirror(root, n=6, release="dr16", seed=0):
    """A tiny SAS-layout mirror: catalogue + aspcapStar files; returns (df, flux, err)."""
    rng = np.random.default_rng(seed)
    inside = ap.chip_mask()
    ids = [f"2M{i:08d}+1234567" for i in range(n)]
    df = pd.DataFrame({"APOGEE_ID": ids,
                       "TELESCOPE": ["apo25m"] * (n - 1) + ["lco25m"],
                       "FIELD": [f"{i % 3:03d}+05" for i in range(n)],
                       "TEFF": np.linspace(4000, 5000, n),
                       "ASPCAPFLAG": np.arange(n, dtype=np.int64)})
    flux = np.where(inside, 1 + 0.02 * rng.standard_normal((n, 8575)), 0).astype(np.float32)
    err = np.where(inside, 0.01 + 0.001 * np.arange(n)[:, None], 0).astype(np.float32)
    for i in range(n):
        p = ap.aspcapstar_path(root, release, df.TELESCOPE[i], df.FIELD[i], ids[i])
        ap.write_aspcapstar(p, flux[i], err[i], flux[i], apogee_id=ids[i])
    return df, flux, err


def _path(root, df, i, release="dr16"):
    return ap.aspcapstar_path(root, release, df.TELESCOPE[i], df.FIELD[i], df.APOGEE_ID[i])


def test_round_trip_and_reuse(tmp_path):
    df, flux, err = _mirror(tmp_path / "sas")
    out = tmp_path / "cache"
    c = sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                               n_jobs=1, progress=False)
    assert isinstance(c.flux, np.memmap) and c.flux.dtype == np.float32
    assert c.flux.shape == (6, 8575) and c.error.shape == (6, 8575)
    np.testing.assert_array_equal(c.flux, flux)
    np.testing.assert_array_equal(c.error, err)
    assert c.apogee_ids.tolist() == df.APOGEE_ID.tolist()
    pd.testing.assert_frame_equal(c.catalogue, df, check_dtype=False)
    assert c.catalogue["FIELD"].tolist() == df["FIELD"].tolist()  # '000+05' stays a string
    m = json.loads((out / "manifest.json").read_text())
    assert m["n_stars"] == 6 and m["dtype"] == "float32" and m["skipped"] == []
    assert len(m["key"]) == 64 and m["release"] == "dr16"
    # plain numpy can map the arrays too
    assert np.load(out / "flux.npy", mmap_mode="r").shape == (6, 8575)
    # same inputs: reused (mtime of flux unchanged); expect_ids passes
    before = (out / "flux.npy").stat().st_mtime_ns
    c2 = sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                                n_jobs=1, progress=False)
    assert (out / "flux.npy").stat().st_mtime_ns == before
    assert c2.manifest["key"] == m["key"]
    sc.load_spectra_cache(out, expect_ids=df.APOGEE_ID)


@pytest.mark.parametrize("workers_write", [True, False])
def test_parallel_matches_serial(tmp_path, monkeypatch, workers_write):
    monkeypatch.setattr(cache_builder, "_WORKERS_WRITE", workers_write)
    df, flux, err = _mirror(tmp_path / "sas", n=9)
    for kind, n_jobs in (("process", 1), ("process", 2), ("thread", 2)):
        out = tmp_path / f"{kind}{n_jobs}"
        c = sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                                   n_jobs=n_jobs, executor=kind, batch_size=2,
                                   progress=False)
        np.testing.assert_array_equal(c.flux, flux)
        np.testing.assert_array_equal(c.error, err)


def test_key_changes_with_inputs(tmp_path):
    df, flux, err = _mirror(tmp_path / "sas")
    out = tmp_path / "cache"
    k1 = sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                                n_jobs=1, progress=False).manifest["key"]
    # rewrite one file with new content: the cache is rebuilt and shows the new flux
    p = _path(tmp_path / "sas", df, 2)
    ap.write_aspcapstar(p, flux[2] * 0 + np.where(ap.chip_mask(), 2, 0), err[2], flux[2],
                        apogee_id=df.APOGEE_ID[2])
    c = sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                               n_jobs=1, progress=False)
    assert c.manifest["key"] != k1
    assert c.flux[2, 1000] == 2
    k3 = sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                                n_jobs=1, progress=False, key_extra={"v": 2}).manifest["key"]
    assert k3 not in (k1, c.manifest["key"])
    assert not list(tmp_path.glob(".cache.*"))  # no temporaries left behind


def test_id_check(tmp_path):
    df, _, _ = _mirror(tmp_path / "sas")
    out = tmp_path / "cache"
    sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                           n_jobs=1, progress=False)
    wrong = df.APOGEE_ID.tolist()
    wrong[3], wrong[4] = wrong[4], wrong[3]
    with pytest.raises(sc.SpectraCacheError, match="first at row 3"):
        sc.load_spectra_cache(out, expect_ids=wrong)
    with pytest.raises(sc.SpectraCacheError, match="6 vs 5 rows"):
        sc.load_spectra_cache(out, expect_ids=wrong[:5])
    # tamper: ids stored no longer match the catalogue column
    ids = np.load(out / "apogee_ids.npy")
    np.save(out / "apogee_ids.npy", ids[::-1])
    with pytest.raises(sc.SpectraCacheError, match="misaligned"):
        sc.load_spectra_cache(out)


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    df, _, _ = _mirror(tmp_path / "sas")
    out = tmp_path / "cache"
    calls = {"n": 0}
    real = cache_builder._read_batch

    def boom(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(*args)

    monkeypatch.setattr(cache_builder, "_read_batch", boom)
    with pytest.raises(KeyboardInterrupt):
        sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                               n_jobs=1, batch_size=2, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "sas"]
    with pytest.raises(FileNotFoundError, match="no spectra cache"):
        sc.load_spectra_cache(out)


def test_interrupted_rebuild_keeps_old_cache(tmp_path, monkeypatch):
    df, flux, _ = _mirror(tmp_path / "sas")
    out = tmp_path / "cache"
    sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                           n_jobs=1, progress=False)
    monkeypatch.setattr(cache_builder, "_read_batch", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                               n_jobs=1, progress=False, force=True)
    np.testing.assert_array_equal(sc.load_spectra_cache(out).flux, flux)


def test_writer_chunks_commit_and_discard(tmp_path):
    n = 10
    cat = pd.DataFrame({"APOGEE_ID": [f"S{i}" for i in range(n)], "X": np.arange(n)})
    f = np.random.default_rng(1).random((n, 8575), dtype=np.float32)
    out = tmp_path / "synth"
    with sc.SpectraCacheWriter(out, cat, release="synthetic", key_extra={"seed": 1}) as w:
        for s in range(0, n, 4):
            w.write(slice(s, s + 4), f[s:s + 4], f[s:s + 4] * 0.1)
        assert not out.exists()  # nothing visible before commit
    c = sc.load_spectra_cache(out, expect_ids=cat.APOGEE_ID)
    np.testing.assert_array_equal(c.flux, f)
    assert c.manifest["release"] == "synthetic"
    # a block that fails, or leaves rows unwritten, commits nothing
    out2 = tmp_path / "synth2"
    with pytest.raises(RuntimeError):
        with sc.SpectraCacheWriter(out2, cat) as w:
            w.write(slice(0, 4), f[:4], f[:4])
            raise RuntimeError("generator crashed")
    assert not out2.exists()
    with pytest.raises(sc.SpectraCacheError, match="never written"):
        with sc.SpectraCacheWriter(out2, cat) as w:
            w.write(slice(0, 4), f[:4], f[:4])
    assert not out2.exists() and not list(tmp_path.glob(".synth2*"))
    with pytest.raises(ValueError, match="non-finite"):
        with sc.SpectraCacheWriter(out2, cat) as w:
            bad = f[:4].copy()
            bad[1, 7] = np.nan
            w.write(slice(0, 4), bad, f[:4])
    assert not out2.exists()


def test_refuses_to_replace_a_non_cache_directory(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    cat = pd.DataFrame({"APOGEE_ID": ["a"]})
    with pytest.raises(sc.SpectraCacheError, match="not a spectra cache"):
        sc.SpectraCacheWriter(d, cat)
    assert (d / "notes.txt").read_text() == "mine"


def test_incomplete_cache_is_rejected(tmp_path):
    df, _, _ = _mirror(tmp_path / "sas", n=2)
    out = tmp_path / "cache"
    sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                           n_jobs=1, progress=False)
    (out / "error.npy").unlink()
    with pytest.raises(sc.SpectraCacheError, match="missing file.*error.npy"):
        sc.load_spectra_cache(out)
    (out / "manifest.json").write_text("{trunc")
    with pytest.raises(sc.SpectraCacheError, match="no readable manifest"):
        sc.load_spectra_cache(out)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize("damage, match", [
    ("delete", r"not found"),
    ("corrupt", r"not a readable FITS|corrupt"),
    ("nan", r"non-finite"),
    ("short", r"NAXIS1=100 pixels, expected 8575"),
    ("crval", r"CRVAL1=4\.2"),
    ("dir", r"is a directory"),
])
def test_bad_input_raises_or_is_skipped(tmp_path, damage, match):
    from astropy.io import fits
    df, flux, _ = _mirror(tmp_path / "sas")
    p = _path(tmp_path / "sas", df, 3)
    if damage == "delete":
        p.unlink()
    elif damage == "corrupt":
        p.write_bytes(b"\0" * 5000)
    elif damage == "dir":
        p.unlink()
        p.mkdir()
    else:
        with fits.open(p) as h:
            hdus = [hdu.copy() for hdu in h]
        if damage == "nan":
            hdus[1].data[4000] = np.nan
        elif damage == "short":
            hdus[1].data = hdus[1].data[:100]
        elif damage == "crval":
            hdus[2].header["CRVAL1"] = 4.2
        fits.HDUList(hdus).writeto(p, overwrite=True)
    out = tmp_path / "cache"
    with pytest.raises((ap.ApogeeFormatError, OSError), match=match) as ei:
        sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                               n_jobs=1, progress=False)
    assert df.APOGEE_ID[3] in str(ei.value)  # the message names the file
    assert not out.exists()
    c = sc.build_spectra_cache(df, out, apogee_root=tmp_path / "sas", release="dr16",
                               n_jobs=2, batch_size=2, progress=False, skip_bad=True)
    keep = [0, 1, 2, 4, 5]
    assert c.apogee_ids.tolist() == df.APOGEE_ID[keep].tolist()
    assert c.catalogue.APOGEE_ID.tolist() == df.APOGEE_ID[keep].tolist()
    np.testing.assert_array_equal(c.flux, flux[keep])
    (s,) = c.skipped
    assert s["row"] == 3 and s["apogee_id"] == df.APOGEE_ID[3] and s["path"] == str(p)
    assert pytest.importorskip("re").search(match, s["reason"])


def test_all_bad_is_an_error(tmp_path):
    df, _, _ = _mirror(tmp_path / "sas", n=2)
    with pytest.raises(sc.SpectraCacheError, match="all 2 files were bad"):
        sc.build_spectra_cache(df, tmp_path / "c", apogee_root=tmp_path / "elsewhere",
                               release="dr16", skip_bad=True, n_jobs=1, progress=False)
    assert not (tmp_path / "c").exists()


def test_catalogue_checks(tmp_path):
    with pytest.raises(sc.SpectraCacheError, match="APOGEE_ID"):
        sc.build_spectra_cache(pd.DataFrame({"X": [1]}), tmp_path / "c", paths=["a"],
                               progress=False)
    with pytest.raises(sc.SpectraCacheError, match="TELESCOPE"):
        sc.build_spectra_cache(pd.DataFrame({"APOGEE_ID": ["a"]}), tmp_path / "c",
                               apogee_root=tmp_path, release="dr16", progress=False)
    with pytest.raises(ValueError, match="2 paths for 1"):
        sc.build_spectra_cache(pd.DataFrame({"APOGEE_ID": ["a"]}), tmp_path / "c",
                               paths=["a", "b"], progress=False)
