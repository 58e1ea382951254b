"""Formats of helpers.apogee: grid, bits, paths, writer -> reader round trips, bad input."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from helpers import apogee as ap

OCCAM_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "occam"

# A DR17-like element list: different length and order from DR16 (no Ge, Rb; Ce moved).
# The real DR17 list is not hard-coded anywhere: readers must use the file's own order.
DR17_LIKE = ["C", "CI", "N", "O", "Na", "Mg", "Al", "Si", "P", "S", "K", "Ca", "Ti",
             "TiII", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Ce", "Nd", "Yb"][::-1]


# ---------------------------------------------------------------------- grid, chips, bits

def test_wavelength_grid_matches_fits_keywords():
    w = ap.wavelength_grid()
    assert w.shape == (8575,) and w.dtype == np.float64
    assert w[0] == pytest.approx(15100.80, abs=0.01)
    assert w[-1] == pytest.approx(16999.81, abs=0.01)
    assert np.allclose(np.diff(np.log10(w)), 6e-6)


def test_chips():
    m = ap.chip_mask()
    assert m.sum() == 7514
    assert not m[245] and m[246] and m[3273] and not m[3274]
    assert ap.CHIPS["green"] == slice(3585, 6080) and ap.CHIPS["red"] == slice(6344, 8335)


def test_bits():
    assert ap.ASPCAPFLAG_BITS["STAR_BAD"] == 23
    assert ap.PIXMASK_BITS["SIG_TELLURIC"] == 13 and ap.PIXMASK_BITS["BADPIX"] == 0
    assert sorted(ap.PIXMASK_BITS.values()) == list(range(14))
    v = np.array([0, 1 << 23, (1 << 23) | 1, 1 << 22], dtype=np.int64)
    assert ap.flag_set(v, "STAR_BAD").tolist() == [False, True, True, False]
    assert ap.flag_set(np.array([1 << 13]), "SIG_TELLURIC").tolist() == [True]
    assert ap.flag_names((1 << 23) | 1) == ["TEFF_WARN", "STAR_BAD"]
    with pytest.raises(KeyError, match="NOT_A_FLAG"):
        ap.flag_set(v, "NOT_A_FLAG")


def test_element_lists():
    assert len(ap.DR16_ELEM_SYMBOL) == 26 and len(ap.RSCA_ELEMENTS) == 21
    assert set(ap.RSCA_ELEMENTS) <= set(ap.DR16_ELEM_SYMBOL)
    assert ap.elem_column("TiII") == "TIII_FE" and ap.elem_column("Fe") == "FE_H"


# ---------------------------------------------------------------------- paths

def test_paths_follow_sas_layout(tmp_path):
    a16 = ap.aspcapstar_path(tmp_path, "dr16", "apo25m", "120+12", "2M00000002+7417074")
    assert a16 == tmp_path / "dr16/apogee/spectro/aspcap/r12/l33/apo25m/120+12/" \
                             "aspcapStar-r12-2M00000002+7417074.fits"
    a17 = ap.aspcapstar_path(tmp_path, "DR17", "lco25m", "F1", "2M1")
    assert a17 == tmp_path / "dr17/apogee/spectro/aspcap/dr17/synspec_rev1/lco25m/F1/" \
                             "aspcapStar-dr17-2M1.fits"
    assert ap.allstar_path(tmp_path, "dr16") == \
        tmp_path / "dr16/apogee/spectro/aspcap/r12/l33/allStar-r12-l33.fits"
    assert ap.allstar_path(tmp_path, "dr17") == tmp_path / \
        "dr17/apogee/spectro/aspcap/dr17/synspec_rev1/allStar-dr17-synspec_rev1.fits"
    with pytest.raises(ValueError, match="dr15"):
        ap.allstar_path(tmp_path, "dr15")
    with pytest.raises(ValueError, match="path component"):
        ap.aspcapstar_path(tmp_path, "dr16", "apo25m", "../x", "2M1")


# ---------------------------------------------------------------------- aspcapStar

def _spectrum(seed=0):
    rng = np.random.default_rng(seed)
    flux = (1 + 0.05 * rng.standard_normal(8575)).astype(np.float32)
    err = np.full(8575, 0.01, np.float32)
    model = (flux + 0.001).astype(np.float32)
    return flux, err, model


def test_aspcapstar_round_trip(tmp_path):
    flux, err, model = _spectrum()
    bad = np.zeros(8575, bool)
    bad[[300, 4000]] = True
    flux[4000] = np.nan  # allowed because it is marked bad
    p = ap.write_aspcapstar(tmp_path / "a.fits", flux, err, model, apogee_id="2M1",
                            bad=bad, telescope="apo25m", params={"TEFF": 4500.0})
    s = ap.read_aspcapstar(p)
    inside = ap.chip_mask()
    assert s.flux.dtype == np.float32 and s.flux.shape == (8575,)
    assert np.all(s.flux[~inside] == 0) and np.all(s.model[~inside] == 0)
    ok = inside & ~bad
    np.testing.assert_array_equal(s.flux[ok], flux[ok])
    np.testing.assert_array_equal(s.error[ok], err[ok])
    np.testing.assert_array_equal(s.model[ok], model[ok])
    assert s.flux[300] == np.float32(1e-4) and s.error[300] == np.float32(1e10)
    assert s.bad_pixels()[[300, 4000]].all() and s.bad_pixels().sum() == 2
    assert s.apogee_id == "2M1"
    for i in (1, 2, 3):
        h = fits.getheader(p, i)
        assert h["CRVAL1"] == 4.179 and h["CDELT1"] == 6e-6 and h["NAXIS1"] == 8575
        assert h["CRPIX1"] == 1 and h["CTYPE1"] == "LOG-LINEAR"
    with fits.open(p) as hdul:
        assert len(hdul) == 5 and hdul[0].data is None
        assert hdul[4].data["APOGEE_ID"][0] == "2M1" and len(hdul[4].data) == 1


def test_write_aspcapstar_rejects_unmarked_nan(tmp_path):
    flux, err, model = _spectrum()
    flux[500] = np.nan
    with pytest.raises(ValueError, match="non-finite.*pixel 500"):
        ap.write_aspcapstar(tmp_path / "a.fits", flux, err, model, apogee_id="2M1")
    with pytest.raises(ValueError, match="shape"):
        ap.write_aspcapstar(tmp_path / "a.fits", flux[:100], err, model, apogee_id="2M1")


def _write_raw(path, flux, *, crval=4.179, cdelt=6e-6, drop_key=None, n_hdu=4):
    hdus = [fits.PrimaryHDU()]
    for _ in range(n_hdu - 1):
        h = fits.ImageHDU(np.asarray(flux, np.float32))
        h.header["CRVAL1"] = crval
        h.header["CDELT1"] = cdelt
        h.header["CRPIX1"] = 1
        if drop_key:
            del h.header[drop_key]
        hdus.append(h)
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.parametrize("kwargs, match", [
    (dict(flux=np.ones(8000)), "NAXIS1=8000.*expected 8575"),
    (dict(crval=4.18), "CRVAL1=4.18.*expected 4.179"),
    (dict(cdelt=1e-5), "CDELT1.*expected 6e-06"),
    (dict(drop_key="CRVAL1"), "lacks the CRVAL1"),
    (dict(n_hdu=2), "2 HDUs, expected at least 4"),
])
def test_read_aspcapstar_bad_layout(tmp_path, kwargs, match):
    kwargs.setdefault("flux", np.ones(8575))
    p = _write_raw(tmp_path / "bad.fits", **kwargs)
    with pytest.raises(ap.ApogeeFormatError, match=match) as ei:
        ap.read_aspcapstar(p)
    assert "bad.fits" in str(ei.value)


def test_read_aspcapstar_non_finite_flux(tmp_path):
    f = np.ones(8575)
    f[1000] = np.inf
    p = _write_raw(tmp_path / "inf.fits", f)
    with pytest.raises(ap.ApogeeFormatError, match=r"inf\.fits.*flux.*non-finite.*pixel 1000"):
        ap.read_aspcapstar(p)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_read_aspcapstar_missing_corrupt_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fits"):
        ap.read_aspcapstar(tmp_path / "nope.fits")
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"this is not a FITS file" * 200)
    with pytest.raises(ap.ApogeeFormatError, match="junk.fits"):
        ap.read_aspcapstar(junk)
    # a truncated real file
    flux, err, model = _spectrum()
    good = ap.write_aspcapstar(tmp_path / "t.fits", flux, err, model, apogee_id="2M1")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.fits"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ap.ApogeeFormatError, match="trunc.fits"):
        ap.read_aspcapstar(trunc)
    with pytest.raises(ap.ApogeeFormatError, match="is a directory"):
        ap.read_aspcapstar(tmp_path)


# ---------------------------------------------------------------------- allStar

def _allstar_table(elems, n=5, seed=1):
    rng = np.random.default_rng(seed)
    x_h = rng.normal(0, 0.2, size=(n, len(elems))).astype(np.float32)
    x_h[1, 2] = ap.MISSING
    return {
        "APOGEE_ID": np.array([f"2M{i:08d}+0000000" for i in range(n)]),
        "TELESCOPE": np.array(["apo25m"] * (n - 1) + ["lco25m"]),
        "FIELD": np.array(["120+12", "060", "M67", "K2_C4", "N6791"][:n]),
        "TEFF": np.linspace(4100, 4900, n).astype(np.float32),
        "LOGG": np.linspace(1.6, 2.9, n).astype(np.float32),
        "FE_H": x_h[:, elems.index("Fe")].copy(),
        "X_H": x_h,
        "ASPCAPFLAG": np.array([0, 0, 1 << 23, 0, 0], np.int64)[:n],
        "STARFLAG": np.zeros(n, np.int64),
        "AK_TARG": np.full(n, 0.1, np.float32),
        "VHELIO_AVG": np.linspace(-50, 50, n).astype(np.float32),
        "VSCATTER": np.full(n, 0.1, np.float32),
        "SNR": np.full(n, 150.0, np.float32),
        "NVISITS": np.full(n, 3, np.int32),
        "VISITS": np.array(["apo25m.5000.57000.10-x-57000-1"] * n),
    }


@pytest.mark.parametrize("release, elems", [("dr16", list(ap.DR16_ELEM_SYMBOL)),
                                            ("dr17", DR17_LIKE)])
def test_allstar_round_trip(tmp_path, release, elems):
    tab = _allstar_table(elems)
    path = ap.write_allstar(tmp_path / "allStar.fits", tab, elems, release)
    df = ap.read_allstar(path)
    assert df.attrs["elem_symbol"] == elems
    for j, e in enumerate(elems):
        np.testing.assert_array_equal(df[f"X_H_{e}"].to_numpy(), tab["X_H"][:, j])
        assert ap.elem_column(e) in df.columns
    assert df["APOGEE_ID"].tolist() == tab["APOGEE_ID"].tolist()
    assert df["FIELD"].tolist() == ["120+12", "060", "M67", "K2_C4", "N6791"]
    np.testing.assert_allclose(df["TEFF"], tab["TEFF"])
    assert df["VISITS"].iloc[0].split("-")[2] == "57000"
    # per-element [X/Fe] computed, missing stays -9999.99
    mg = elems.index("Mg")
    np.testing.assert_allclose(df["MG_FE"], tab["X_H"][:, mg] - tab["FE_H"], atol=1e-6)
    missing_el = elems[2]
    assert df[f"X_H_{missing_el}"].iloc[1] == np.float32(ap.MISSING)
    assert df[ap.elem_column(missing_el)].iloc[1] == np.float32(ap.MISSING)
    # HDU3 holds ELEM_SYMBOL in the file's order
    with fits.open(path) as hdul:
        syms = [s.strip() for s in np.atleast_2d(hdul[3].data["ELEM_SYMBOL"])[0]]
        assert syms == elems
        assert hdul[1].data["X_H"].shape == (5, len(elems))
        assert hdul[0].header["RELEASE"] == release
    # a second write from the DataFrame form gives the same file content
    again = ap.read_allstar(ap.write_allstar(tmp_path / "again.fits", df, elems, release))
    pd.testing.assert_frame_equal(df, again, check_like=True)


def test_read_allstar_uses_file_order_not_dr16(tmp_path):
    elems = ["Mg", "Fe", "C"]  # nothing like DR16
    tab = _allstar_table(elems)
    df = ap.read_allstar(ap.write_allstar(tmp_path / "a.fits", tab, elems, "dr17"))
    np.testing.assert_array_equal(df["X_H_Mg"], tab["X_H"][:, 0])
    np.testing.assert_array_equal(df["X_H_C"], tab["X_H"][:, 2])
    assert "X_H_CI" not in df.columns


def test_read_allstar_columns_and_selection(tmp_path):
    elems = list(ap.DR16_ELEM_SYMBOL)
    tab = _allstar_table(elems)
    path = ap.write_allstar(tmp_path / "a.fits", tab, elems, "dr16")
    df = ap.read_allstar(path, columns=["APOGEE_ID", "TEFF"])
    assert list(df.columns) == ["APOGEE_ID", "TEFF"]
    full = ap.read_allstar(path)
    # row 1 lacks an element that RSCA uses (index 2 = N); row 2 is STAR_BAD
    from helpers.rsca.selection import passes_field_cuts

    assert passes_field_cuts(full).tolist() == [True, False, False, True, True]
    with pytest.raises(ap.ApogeeFormatError, match=r"a\.fits.*missing column.*NOPE"):
        ap.read_allstar(path, columns=["APOGEE_ID", "NOPE"])


def test_read_allstar_bad_files(tmp_path):
    elems = list(ap.DR16_ELEM_SYMBOL)
    tab = _allstar_table(elems)
    del tab["LOGG"]
    with pytest.raises(ValueError, match="LOGG"):
        ap.write_allstar(tmp_path / "x.fits", tab, elems, "dr16")
    # a file without LOGG: the reader names the file and the column
    cols = [fits.Column(name="APOGEE_ID", format="5A", array=np.array(["a", "b"])),
            fits.Column(name="X_H", format="3E", array=np.zeros((2, 3)))]
    sym = fits.Column(name="ELEM_SYMBOL", format="6A", dim="(2,3)",
                      array=np.array([["C", "N", "O"]]))
    p = tmp_path / "nologg.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols),
                  fits.BinTableHDU.from_columns([fits.Column(name="X", format="J",
                                                             array=[0])]),
                  fits.BinTableHDU.from_columns([sym])]).writeto(p)
    with pytest.raises(ap.ApogeeFormatError, match=r"nologg\.fits.*missing column.*LOGG"):
        ap.read_allstar(p)
    # X_H width disagreeing with ELEM_SYMBOL
    sym4 = fits.Column(name="ELEM_SYMBOL", format="8A", dim="(2,4)",
                       array=np.array([["C", "N", "O", "Fe"]]))
    p2 = tmp_path / "width.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols),
                  fits.BinTableHDU.from_columns([fits.Column(name="X", format="J",
                                                             array=[0])]),
                  fits.BinTableHDU.from_columns([sym4])]).writeto(p2)
    with pytest.raises(ap.ApogeeFormatError, match=r"width\.fits.*X_H has 3.*lists 4"):
        ap.read_allstar(p2, columns=["APOGEE_ID", "X_H"])
    # no HDU3
    p3 = tmp_path / "nohdu3.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(p3)
    with pytest.raises(ap.ApogeeFormatError, match=r"nohdu3\.fits.*HDU3"):
        ap.read_allstar(p3)
    with pytest.raises(FileNotFoundError, match="absent.fits"):
        ap.read_allstar(tmp_path / "absent.fits")


# ---------------------------------------------------------------------- OCCAM

def _members():
    return pd.DataFrame({
        "CLUSTER": ["NGC 6791", "NGC 6791", "M 67"],
        "APOGEE_ID": ["2M1", "2M2", "2M3"],
        "VHELIO_AVG": [-47.0, -46.5, 34.0],
        "FE_H": [0.35, 0.33, 0.0],
        "RV_PROB": [0.9, 0.8, 0.99], "FEH_PROB": [0.9, 0.7, 0.9],
        "PM_PROB": [0.9, 0.9, 0.9], "CG_PROB": [0.95, ap.MISSING, 0.9],
    })


def test_occam_round_trip(tmp_path):
    m = _members()
    back = ap.read_occam_members(ap.write_occam_members(tmp_path / "m.fits", m))
    pd.testing.assert_frame_equal(back, m, check_dtype=False)
    c = pd.DataFrame({"NAME": ["NGC_6791", "M_67"], "RV": [-46.9, 34.0],
                      "FE_H": [0.35, 0.0], "MG_FE": [0.1, 0.0], "NUM_STARS": [46, 30],
                      "QUAL": [2, 1]})
    back = ap.read_occam_clusters(ap.write_occam_clusters(tmp_path / "c.fits", c))
    pd.testing.assert_frame_equal(back, c, check_dtype=False)
    with pytest.raises(ap.ApogeeFormatError, match=r"c\.fits.*missing.*CLUSTER"):
        ap.read_occam_members(tmp_path / "c.fits")


@pytest.mark.skipif(not OCCAM_DIR.is_dir(), reason=f"real OCCAM files absent ({OCCAM_DIR})")
def test_occam_real_dr16():
    m = ap.read_occam_members(OCCAM_DIR / "occam_member-DR16.fits")
    c = ap.read_occam_clusters(OCCAM_DIR / "occam_cluster-DR16.fits")
    assert len(c) == 126 and c["NAME"].nunique() == 126
    assert len(m) == 10063 and m["CLUSTER"].nunique() == 126
    for col in ("CLUSTER", "APOGEE_ID", "VHELIO_AVG", "FE_H", "RV_PROB", "FEH_PROB",
                "PM_PROB", "CG_PROB"):
        assert col in m.columns
    for col in ("NAME", "RV", "FE_H", "MG_FE", "NUM_STARS", "QUAL"):
        assert col in c.columns
    assert (m["CG_PROB"] == -9999.99).sum() > 0
    assert set(np.unique(m["CG_PROB"][m["CG_PROB"] < 0])) == {-9999.99}
    assert m["CG_PROB"][m["CG_PROB"] >= 0].max() <= 1.0
    assert not m["APOGEE_ID"].str.endswith(" ").any()
    assert m["APOGEE_ID"].str.len().max() == 18
    assert "NGC 6791" in set(m["CLUSTER"])


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root can read files without read permission")
def test_read_aspcapstar_permission_denied(tmp_path):
    flux, err, model = _spectrum()
    p = ap.write_aspcapstar(tmp_path / "locked.fits", flux, err, model, apogee_id="2M1")
    p.chmod(0)
    try:
        with pytest.raises(PermissionError, match="locked.fits.*not readable"):
            ap.read_aspcapstar(p)
    finally:
        p.chmod(0o644)
