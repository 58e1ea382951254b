"""The spectra cache as a Zarr store (helpers.apogee.cache_zarr) and its command lines."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers import apogee as ap
from helpers.apogee.cache_zarr import (ZARR_NAME, load_zarr_cache, open_zarr_store,
                                       write_zarr_cache, write_zarr_store)
from helpers.survey import cli as survey

pytest.importorskip("zarr")
pytest.importorskip("dask.array")


def _cache(path, n=300, seed=0, prefix="2M"):
    rng = np.random.default_rng(seed)
    cat = pd.DataFrame({"APOGEE_ID": [f"{prefix}{i:08d}" for i in range(n)],
                        "TEFF": rng.uniform(4000, 5000, n), "FIELD": ["120+12"] * n,
                        "STAR_BAD": rng.random(n) < 0.1})
    flux = rng.random((n, ap.N_PIXELS), dtype=np.float32)
    err = rng.random((n, ap.N_PIXELS), dtype=np.float32)
    with ap.SpectraCacheWriter(path, cat, release="test") as w:
        w.write(slice(0, n), flux, err)
    return ap.load_spectra_cache(path)


def test_round_trip_and_reuse(tmp_path):
    c = _cache(tmp_path / "c")
    out = write_zarr_cache(c, chunk_rows=64, progress=False)
    assert out == tmp_path / "c" / ZARR_NAME
    z = load_zarr_cache(tmp_path / "c")          # the cache folder finds its copy
    assert z.flux.chunks[0][:2] == (64, 64) and z.flux.shape == c.flux.shape
    np.testing.assert_array_equal(z.flux.compute(), c.flux)
    np.testing.assert_array_equal(z.error[10:20].compute(), c.error[10:20])
    assert z.apogee_ids.tolist() == c.apogee_ids.tolist()
    pd.testing.assert_frame_equal(z.catalogue, c.catalogue)
    np.testing.assert_allclose(z.wavelength, ap.wavelength_grid())
    assert z.attrs["source_key"] == c.manifest["key"]
    # the same cache again: reused, not rewritten
    stamp = (out / "zarr.json").stat().st_mtime_ns
    write_zarr_cache(c, progress=False)
    assert (out / "zarr.json").stat().st_mtime_ns == stamp
    # dask chunks of another size on request
    assert load_zarr_cache(out, chunk_rows=128).flux.chunks[0][0] == 128
    # the memory-mapped cache still loads (the store is an extra folder inside it)
    assert len(ap.load_spectra_cache(tmp_path / "c")) == 300


def test_store_on_another_grid_is_refused(tmp_path):
    ids = ["a", "b", "c"]
    grid = {"CRVAL1": 4.0, "CDELT1": 1e-5, "n_pixels": 4000}
    write_zarr_store(tmp_path / "other.zarr", {"flux": np.zeros((3, 4000), np.float32)}, ids,
                     grid=grid, progress=False)
    with pytest.raises(ap.SpectraCacheError, match="another wavelength grid.*4000 pixels.*"
                                                   "expected CRVAL1=4.179.*8575 pixels"):
        open_zarr_store(tmp_path / "other.zarr")
    # the caller may work on that grid, then it opens
    assert open_zarr_store(tmp_path / "other.zarr", grid=grid).flux.shape == (3, 4000)
    # same pixel count, shifted start: still another grid
    write_zarr_store(tmp_path / "shifted.zarr", {"flux": np.zeros((3, 8575), np.float32)}, ids,
                     grid={**ap.cache_zarr.APOGEE_GRID, "CRVAL1": 4.18}, progress=False)
    with pytest.raises(ap.SpectraCacheError, match="another wavelength grid: CRVAL1=4.18"):
        open_zarr_store(tmp_path / "shifted.zarr")


def test_ids_and_staleness_are_checked(tmp_path):
    c = _cache(tmp_path / "c", n=50)
    write_zarr_cache(c, progress=False)
    want = list(c.apogee_ids)
    assert len(load_zarr_cache(tmp_path / "c", expect_ids=want)) == 50
    want[7] = "2M_other"
    with pytest.raises(ap.SpectraCacheError, match="first difference at row 7"):
        load_zarr_cache(tmp_path / "c", expect_ids=want)
    with pytest.raises(ap.SpectraCacheError, match="49 rows"):
        load_zarr_cache(tmp_path / "c", expect_ids=want[:49])
    # a copy made from another cache, placed in this one, is refused as stale
    other = _cache(tmp_path / "c2", n=50, seed=1, prefix="2N")
    write_zarr_cache(other, tmp_path / "c" / ZARR_NAME, progress=False, force=True)
    with pytest.raises(ap.SpectraCacheError, match="copied from another cache"):
        load_zarr_cache(tmp_path / "c")


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Zarr spectra store"):
        open_zarr_store(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(ap.SpectraCacheError, match="not a Zarr store; refusing"):
        write_zarr_store(tmp_path / "junk", {"flux": np.zeros((1, 8575), np.float32)}, ["a"],
                         progress=False)
    with pytest.raises(ap.SpectraCacheError, match="not a readable Zarr store|format"):
        open_zarr_store(tmp_path / "junk")
    with pytest.raises(ValueError, match="expected \\(2, D\\) for 2 ids"):
        write_zarr_store(tmp_path / "s.zarr", {"flux": np.zeros((3, 8575), np.float32)},
                         ["a", "b"], progress=False)
    with pytest.raises(ValueError, match="has 100 pixels per row but the grid has 8575"):
        write_zarr_store(tmp_path / "s.zarr", {"flux": np.zeros((2, 100), np.float32)},
                         ["a", "b"], progress=False)
    assert not list(tmp_path.glob(".s.zarr.building-*"))


def test_compressed_mask_and_any_arrays(tmp_path):
    rng = np.random.default_rng(2)
    flux = rng.random((40, 8575), dtype=np.float32)
    obs = rng.random((40, 8575)) > 0.05
    write_zarr_store(tmp_path / "in.zarr", {"flux": flux, "observed": obs},
                     [f"s{i}" for i in range(40)], compress=["observed"], chunk_rows=16,
                     progress=False)
    s = open_zarr_store(tmp_path / "in.zarr")
    assert s["observed"].dtype == bool and s["flux"].dtype == np.float32
    np.testing.assert_array_equal(s["observed"].compute(), obs)
    assert s.catalogue is None
    size = sum(f.stat().st_size for f in (tmp_path / "in.zarr" / "observed").rglob("*"))
    assert size < obs.nbytes / 5               # the mask compresses


def test_zarr_command(tmp_path, capsys):
    c = _cache(tmp_path / "c", n=40)
    assert survey.main(["zarr", str(tmp_path / "c"), "--no-progress", "--chunk-rows", "16"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == str(tmp_path / "c" / ZARR_NAME)
    assert load_zarr_cache(out).flux.chunks[0][0] == 16
    np.testing.assert_array_equal(load_zarr_cache(out).flux.compute(), c.flux)
    assert survey.main(["zarr", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "no spectra cache" in capsys.readouterr().err


def _mirror(root, n=3):
    """A DR16 SAS mirror of ``n`` RSCA giants: allStar plus one aspcapStar file each."""
    ids = np.array([f"2M{i:08d}-0000001" for i in range(n)])
    elems = list(ap.DR16_ELEM_SYMBOL)
    tab = {"APOGEE_ID": ids, "TELESCOPE": np.array(["apo25m"] * n),
           "FIELD": np.array(["120+12"] * n), "TEFF": np.full(n, 4500.0),
           "LOGG": np.full(n, 2.0), "FE_H": np.zeros(n, np.float32),
           "X_H": np.zeros((n, len(elems)), np.float32), "ASPCAPFLAG": np.zeros(n, np.int64)}
    ap.write_allstar(ap.allstar_path(root, "dr16"), tab, elems, "dr16")
    flux = np.where(ap.chip_mask(), 1.0, 0.0) + np.linspace(0, 0.1, ap.N_PIXELS)
    for k, i in enumerate(ids):
        ap.write_aspcapstar(ap.aspcapstar_path(root, "dr16", "apo25m", "120+12", i),
                            flux + k, flux * 0.01, flux, apogee_id=i)
    return ids


def test_cache_command_writes_zarr(tmp_path, capsys):
    ids = _mirror(tmp_path / "sas")
    rc = survey.main(["cache", "--apogee-root", str(tmp_path / "sas"), "--release", "dr16",
                      "--out", str(tmp_path / "cache"), "--jobs", "1", "--no-progress",
                      "--zarr"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    z = load_zarr_cache(summary["zarr"])
    assert z.apogee_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(z.flux.compute(),
                                  ap.load_spectra_cache(tmp_path / "cache").flux)


def test_generator_writes_zarr_on_request(tmp_path, capsys):
    from helpers.survey import load_survey
    out = tmp_path / "survey"
    rc = survey.main(["generate", "--n-field", "600", "--seed", "3", "--out", str(out),
                      "--no-progress", "--n-files", "2", "--zarr"])
    assert rc == 0, capsys.readouterr().err
    s = load_survey(out)
    z = load_zarr_cache(out / "cache", expect_ids=s.spectra.apogee_ids)
    np.testing.assert_array_equal(z.flux[-5:].compute(), s.spectra.flux[-5:])
