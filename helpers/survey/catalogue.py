"""The survey's catalogue: field giants in fields and plates, open clusters, observing
conditions, ASPCAP-like measured labels, the OCCAM member file and the ground truth.

Book: {ref}`ch-survey`
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from helpers import apogee
from helpers.survey import chemistry as chem
from helpers.survey.params import STREAMS, SurveyParams
from helpers.survey.spectrum import dib_equivalent_width

__all__ = ["cluster_plates", "twomass_ids", "EXCLUDED_STAR", "build_catalogue", "occam_cluster_table"]


def twomass_ids(n: int, rng: np.random.Generator, ra0=None, dec0=None) -> np.ndarray:
    """2MASS-style identifiers '2MHHMMSSss+DDMMSSs'.

    Book: {ref}`sec-survey-files`
    """
    ra = rng.uniform(0, 360, n) if ra0 is None else (ra0 + rng.normal(0, 0.15, n)) % 360
    dec = (np.degrees(np.arcsin(rng.uniform(-0.5, 1.0, n))) if dec0 is None
           else np.clip(dec0 + rng.normal(0, 0.15, n), -89.9, 89.9))
    h = ra / 15.0
    hh = np.floor(h).astype(int)
    mm = np.floor((h - hh) * 60).astype(int)
    ss = np.floor(((h - hh) * 60 - mm) * 6000).astype(int)
    sign = np.where(dec < 0, "-", "+")
    a = np.abs(dec)
    dd = np.floor(a).astype(int)
    dm = np.floor((a - dd) * 60).astype(int)
    ds = np.floor(((a - dd) * 60 - dm) * 600).astype(int)
    return np.array([f"2M{a:02d}{b:02d}{c:04d}{s}{d:02d}{e:02d}{f:03d}" for a, b, c, s, d, e, f
                     in zip(hh.tolist(), mm.tolist(), ss.tolist(), sign.tolist(), dd.tolist(),
                            dm.tolist(), ds.tolist())])


def _unique_ids(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ids = ids.copy()
    for _ in range(20):
        _, first = np.unique(ids, return_index=True)
        dup = np.setdiff1d(np.arange(ids.size), first)
        if not dup.size:
            return ids
        ids[dup] = twomass_ids(dup.size, rng)
    raise RuntimeError("could not make unique APOGEE_IDs")


EXCLUDED_STAR = "2M19203303+3755558"


def cluster_plates(sizes, field_count, cap: int, rng: np.random.Generator,
                    n_field: int) -> np.ndarray:
    """Field plates for the stars towards each cluster, concatenated in cluster order.

    Book: {ref}`sec-clusters`

    A cluster's stars go, ``cap`` at most per plate, onto randomly chosen field plates
    that no other cluster uses; every plate keeps more field stars than cluster stars. In
    a survey too small for that, plates are shared and the cap grows up to that limit.
    """
    sizes = [int(x) for x in sizes]
    room = np.maximum(np.asarray(field_count, int) - 1, 0)  # strict field majority
    for c in (cap, 2 * cap, 4 * cap, 8 * cap, int(room.max(initial=0))):
        left = np.minimum(room, c)
        order = list(rng.permutation(left.size))
        out = []
        for n in sizes:
            plates = []
            while n > 0 and order:
                k = order[0]
                take = min(n, int(left[k]))
                plates += [k] * take
                left[k] -= take
                n -= take
                order.pop(0)  # a plate serves one cluster, unless the survey is too small
            if n > 0:
                break
            out.append(np.array(plates, int))
        else:
            return np.concatenate(out) if out else np.zeros(0, int)
        # too small: let clusters share plates (still a field majority on each)
        left = np.minimum(room, c)
        out = []
        for n in sizes:
            plates = []
            for k in rng.permutation(left.size):
                take = min(n, int(left[k]))
                plates += [int(k)] * take
                left[k] -= take
                n -= take
                if n <= 0:
                    break
            if n > 0:
                break
            out.append(np.array(plates, int))
        else:
            return np.concatenate(out)
    raise ValueError(f"SurveyParams.n_field={n_field}: too few field stars to observe the "
                     f"{sum(sizes)} stars towards the 22 clusters on plates dominated by field "
                     f"giants; raise n_field or set include_clusters=False")


def build_catalogue(p: SurveyParams) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """allStar table, truth arrays and OCCAM member table (all stars, catalogue order).

    Book: {ref}`ch-survey`

    The steps, each a function of this module: field giants grouped in fields and plates
    (:func:`_field_stars`), the stars towards the 22 clusters placed on field plates
    (:func:`_place_clusters`), identifiers (:func:`_star_ids`), observing conditions
    (:func:`_observing_conditions`) and imprint amplitudes (:func:`_imprint_amplitudes`),
    the measured labels of the allStar table (:func:`_measured_labels`), the OCCAM member
    file (:func:`_occam_members`) and the ground truth (:func:`_truth_arrays`).  The steps
    draw from the ``geom`` random stream in this order, so the order is part of the survey.
    Every step takes ``p``; those that draw from the ``geom`` stream take it as ``geom``, and
    those that sample labels take the chemical model as ``model``.

    Parameters
    ----------
    p : SurveyParams
        The survey's parameters.

    Returns
    -------
    allstar : pandas.DataFrame, N rows
        ASPCAP-like measured labels, flags and observing columns (``X_H`` an array column).
    truth : dict of ndarray, each N long
        True labels, membership, observing conditions and imprint amplitudes.
    occam : pandas.DataFrame
        The OCCAM-like member file (the stars seen towards the clusters).
    """
    model = chem.chemical_model(p.n_latent, p.intrinsic_scatter)
    geom = np.random.default_rng([p.seed, STREAMS["geom"]])
    cols, labels, ids, n_plates = _field_stars(p, model, geom)
    frames = []
    if p.include_clusters:
        c_cols, c_labels, c_ids = _place_clusters(p, model, cols, n_plates)
        labels = {k: (np.vstack if v.ndim == 2 else np.concatenate)([v, c_labels[k]])
                  for k, v in labels.items()}
        ids = np.concatenate([ids, c_ids])
        frames.append(pd.DataFrame(c_cols))
    cat = pd.concat([pd.DataFrame(cols)] + frames, ignore_index=True)
    ids = _star_ids(p, cat, ids, labels, geom)
    cat["APOGEE_ID"] = ids
    obs = _observing_conditions(p, cat, n_plates, geom)
    imprints = _imprint_amplitudes(p, cat, geom)
    allstar, fe_meas, miss, star_bad = _measured_labels(p, cat, ids, labels, obs,
                                                        imprints["STARFLAG"])
    occ_df = _occam_members(p, cat, ids, obs["VHELIO_AVG"], fe_meas)
    truth = _truth_arrays(cat, ids, labels, obs, imprints, miss, star_bad)
    return allstar, truth, occ_df


def _field_stars(p: SurveyParams, model, geom: np.random.Generator):
    """Field giants: true labels, grouped in plates of ``stars_per_plate`` and fields of
    1-3 plates, each field with its position, telescope, extinction and ISM velocity.

    Book: {ref}`sec-plates`

    The labels come from the chemical model ({ref}`sec-chemical-model`).  Draws from
    ``geom`` (field geometry, extinction, velocities, identifiers).

    Returns
    -------
    cols : dict of ndarray, each ``n_field`` long
        Catalogue columns FIELD, TELESCOPE, PLATE_IDX, AK_TRUE (mag), V_ISM (km/s),
        VHELIO_TRUE (km/s), CLUSTER (''), IS_MEMBER, IN_OCCAM_FILE (False).
    labels : dict of ndarray
        ``teff`` (K), ``logg``, ``feh``, ``alpha`` (dex), ``latent`` (n_field, n_latent),
        ``x_fe`` (n_field, n_elements).
    ids : ndarray of str, shape (n_field,)
        2MASS-style identifiers (not yet made unique).
    n_plates : int
        Number of field plates.
    """
    fld = chem.sample_field_labels(p.n_field, np.random.default_rng([p.seed, STREAMS["field"]]),
                                   model, p.teff_range, p.logg_range)
    n_f = p.n_field
    plate_of = np.arange(n_f) // p.stars_per_plate
    n_plates = int(plate_of.max()) + 1
    field_of_plate = np.zeros(n_plates, int)
    n_fields = 0
    i = 0
    while i < n_plates:  # 1-3 plates per field
        k = int(geom.integers(1, 4))
        field_of_plate[i:i + k] = n_fields
        n_fields += 1
        i += k
    gl = geom.uniform(0, 360, n_fields)
    gb = np.clip(geom.normal(0, 12, n_fields), -80, 80)
    lco = geom.random(n_fields) < 0.15
    field_names = np.array([f"{int(gl[j]):03d}{int(round(gb[j])):+03d}" + ("_S" if lco[j] else "")
                            for j in range(n_fields)])
    field_ak = p.ak_median * np.exp(1.0 * geom.standard_normal(n_fields))
    field_vism = p.ism_velocity_sigma * geom.standard_normal(n_fields)
    fidx = field_of_plate[plate_of]
    ak_true = field_ak[fidx] * np.exp(0.35 * geom.standard_normal(n_f))
    tail = geom.random(n_f) < 0.1
    v_true = np.where(tail, 2.0, 1.0) * p.vhelio_sigma * geom.standard_normal(n_f)
    cols = {
        "FIELD": field_names[fidx], "TELESCOPE": np.where(lco[fidx], "lco25m", "apo25m"),
        "PLATE_IDX": plate_of, "AK_TRUE": ak_true, "V_ISM": field_vism[fidx],
        "VHELIO_TRUE": v_true, "CLUSTER": np.full(n_f, "", dtype=object),
        "IS_MEMBER": np.zeros(n_f, bool), "IN_OCCAM_FILE": np.zeros(n_f, bool),
    }
    labels = {"teff": fld["teff"], "logg": fld["logg"], "feh": fld["feh"],
              "alpha": fld["alpha_m"], "latent": fld["latent"], "x_fe": fld["x_fe"]}
    return cols, labels, twomass_ids(n_f, geom), n_plates


def _place_clusters(p: SurveyParams, model, cols: dict, n_plates: int):
    """The stars towards the 22 open clusters, observed on field plates.

    Book: {ref}`sec-clusters`

    Members and contaminants come from :func:`helpers.survey.chemistry.sample_cluster_labels`;
    each cluster gets a field named after it, an extinction from its Galactic latitude, an
    ISM velocity and a patch of sky for its identifiers.  Its stars go onto field plates
    (:func:`cluster_plates`), so no plate is a cluster label (issue 13), and the field
    giants on those plates move into the cluster's field: ``cols['FIELD']`` and
    ``cols['TELESCOPE']`` of the field stars are replaced.

    Parameters
    ----------
    cols : dict of ndarray
        The field stars' columns from :func:`_field_stars` (updated in place).
    n_plates : int
        Number of field plates.

    Returns
    -------
    c_cols : dict of ndarray, each ``n_c`` long
        The cluster stars' catalogue columns (IN_OCCAM_FILE True).
    c_labels : dict of ndarray
        Their true labels, keyed as the labels of :func:`_field_stars`.
    c_ids : ndarray of str, shape (n_c,)
        Their 2MASS-style identifiers.
    """
    plate_of = cols["PLATE_IDX"]
    table = chem.load_cluster_table()
    cl = chem.sample_cluster_labels(
        table, model, np.random.default_rng([p.seed, STREAMS["cluster"]]), p.cluster_scatter,
        p.cluster_member_factor, p.cluster_contaminant_fraction)
    crng = np.random.default_rng([p.seed, STREAMS["cluster"], 1])
    n_c = len(cl)
    c_field = np.empty(n_c, dtype=object)
    c_plate = np.empty(n_c, int)
    c_ak = np.empty(n_c)
    c_vism = np.empty(n_c)
    c_ids = np.empty(n_c, dtype=object)
    cluster_sel = []
    for j, row in table.iterrows():
        sel = np.flatnonzero(cl.CLUSTER.to_numpy() == row.NAME)
        cluster_sel.append(sel)
        name = row.NAME.replace("NGC ", "N").replace(" ", "")
        c_field[sel] = name
        ak0 = 0.03 + 0.4 * np.exp(-abs(row.GLAT) / 4.0)
        c_ak[sel] = ak0 * np.exp(0.1 * crng.standard_normal(sel.size))
        c_vism[sel] = p.ism_velocity_sigma * crng.standard_normal()
        ra0 = crng.uniform(0, 360)
        dec0 = crng.uniform(-30, 70)
        c_ids[sel] = twomass_ids(sel.size, crng, ra0, dec0)
    # cluster stars share field plates: a cluster's field is observed with plates
    # that also carry field giants, so no plate is a cluster label (issue 13)
    c_plate[np.concatenate(cluster_sel)] = cluster_plates(
        [s_.size for s_ in cluster_sel], np.bincount(plate_of, minlength=n_plates),
        p.cluster_members_per_plate, np.random.default_rng([p.seed, STREAMS["plate"], 1]),
        p.n_field)
    for sel in cluster_sel:  # the field giants on a cluster's plates lie in its field
        on = np.isin(plate_of, np.unique(c_plate[sel]))
        cols["FIELD"] = np.where(on, c_field[sel[0]], cols["FIELD"])
        cols["TELESCOPE"] = np.where(on, "apo25m", cols["TELESCOPE"])
    c_labels = {"teff": cl.teff.to_numpy(), "logg": cl.logg.to_numpy(), "feh": cl.feh.to_numpy(),
                "alpha": cl.alpha_m.to_numpy(), "latent": np.stack(cl.latent.to_numpy()),
                "x_fe": np.stack(cl.x_fe.to_numpy())}
    c_cols = {
        "FIELD": c_field.astype(str), "TELESCOPE": "apo25m", "PLATE_IDX": c_plate,
        "AK_TRUE": c_ak, "V_ISM": c_vism, "VHELIO_TRUE": cl.RV_TRUE.to_numpy(),
        "CLUSTER": cl.CLUSTER.to_numpy(), "IS_MEMBER": cl.IS_MEMBER.to_numpy(bool),
        "IN_OCCAM_FILE": np.ones(n_c, bool)}
    return c_cols, c_labels, c_ids.astype(str)


def _star_ids(p: SurveyParams, cat: pd.DataFrame, ids: np.ndarray, labels: dict,
              geom: np.random.Generator) -> np.ndarray:
    """Unique APOGEE_IDs, with the star the paper excludes on an NGC 6791 member.

    Book: {ref}`sec-survey-files`

    Duplicated identifiers are drawn again from ``geom``.  The paper removes one star by
    hand, ``2M19203303+3755558`` (:data:`EXCLUDED_STAR`, chapter 3): that identifier goes
    to the first NGC 6791 member inside the RSCA cuts, so the selection has it to remove.

    Parameters
    ----------
    cat : pandas.DataFrame, N rows
        The catalogue so far (CLUSTER, IS_MEMBER).
    ids : ndarray of str, shape (N,)
    labels : dict of ndarray
        True labels (``teff`` in K, ``logg``).

    Returns
    -------
    ndarray of str, shape (N,)
    """
    ids = _unique_ids(ids, geom)
    if p.include_clusters:
        teff, logg = labels["teff"], labels["logg"]
        cand = np.flatnonzero((cat.CLUSTER.to_numpy() == "NGC 6791") & cat.IS_MEMBER.to_numpy()
                              & (teff > 4100) & (teff < 4900) & (logg > 1.7) & (logg < 2.8))
        if cand.size:
            ids[ids == EXCLUDED_STAR] = twomass_ids(1, geom)[0]
            ids[cand[0]] = EXCLUDED_STAR
    return ids


def _observing_conditions(p: SurveyParams, cat: pd.DataFrame, n_plates: int,
                          geom: np.random.Generator) -> dict:
    """S/N, plate identifiers, visits, measured velocity and extinction of every star.

    Book: {ref}`sec-noise`

    Each plate is visited ``1 + Poisson(2)`` times on random nights; a star's VISITS string
    lists its visits (telescope, plate, MJD, fibre), its VHELIO_AVG is the true velocity
    plus a scatter shrinking with the number of visits, and AK_TARG its true extinction
    plus 0.01 mag of noise.

    Parameters
    ----------
    cat : pandas.DataFrame, N rows
        The catalogue so far (PLATE_IDX, TELESCOPE, VHELIO_TRUE, AK_TRUE).
    n_plates : int

    Returns
    -------
    dict of ndarray
        ``SNR`` (N,), ``PLATE`` (per plate: its number), ``VISITS`` (N,) str, ``VSCATTER``
        (N,) km/s, ``NVISITS`` (N,), ``VHELIO_AVG`` (N,) km/s, ``AK_TARG`` (N,) mag.
    """
    n = len(cat)
    snr = p.snr_median * np.exp(p.snr_log_sigma * geom.standard_normal(n))
    snr = np.clip(snr, 25.0, 2000.0)
    plate_ids = 4000 + np.arange(n_plates) * 7 % 9000
    nvis_plate = 1 + geom.poisson(2.0, n_plates)
    start = geom.uniform(55800, 58300, n_plates).astype(int)
    plate_mjds = [start[k] + np.cumsum(np.r_[0, geom.integers(1, 30, nvis_plate[k] - 1)])
                  for k in range(n_plates)]
    fiber = geom.integers(1, 301, n)
    pl = cat.PLATE_IDX.to_numpy()
    tel = cat.TELESCOPE.to_numpy()
    tel_of_plate = {}
    for i_pl, t_ in zip(pl.tolist(), tel.tolist()):
        tel_of_plate.setdefault(i_pl, t_)
    pattern = {k: ",".join(f"{t_}-{plate_ids[k]}-{m}-{{f}}" for m in plate_mjds[k])
               for k, t_ in tel_of_plate.items()}
    visits = np.array([pattern[k].format(f=f"{f_:03d}")
                       for k, f_ in zip(pl.tolist(), fiber.tolist())])
    vscatter = np.where(geom.random(n) < 0.03, geom.uniform(1, 10, n),
                        0.1 * np.exp(0.6 * geom.standard_normal(n)))
    nvis = nvis_plate[pl]
    vhelio = cat.VHELIO_TRUE.to_numpy() + vscatter / np.sqrt(nvis) * geom.standard_normal(n) * 0.3
    ak_targ = cat.AK_TRUE.to_numpy() + 0.01 * geom.standard_normal(n)
    return {"SNR": snr, "PLATE": plate_ids, "VISITS": visits, "VSCATTER": vscatter,
            "NVISITS": nvis, "VHELIO_AVG": vhelio, "AK_TARG": ak_targ}


def _imprint_amplitudes(p: SurveyParams, cat: pd.DataFrame, geom: np.random.Generator) -> dict:
    """Per-star amplitudes of the non-chemical imprints, and the STARFLAG persistence bits.

    Book: {ref}`sec-imprints`

    Interstellar band strengths follow the extinction with a log-normal scatter
    ({ref}`sec-dibs`); telluric and sky residual amplitudes are Gaussian
    ({ref}`sec-atmosphere`); a fraction of stars gets detector persistence, flagged in
    STARFLAG bits 9-11 by its strength as APOGEE does ({ref}`sec-persistence`).

    Parameters
    ----------
    cat : pandas.DataFrame, N rows
        The catalogue so far (AK_TRUE, mag).

    Returns
    -------
    dict of ndarray, each (N,)
        ``DIB_EW`` (Angstrom, the 15273 A band), ``TELLURIC_AMP``, ``SKY_AMP``, ``PERSISTENCE_AMP`` (fractions
        of the continuum), ``STARFLAG`` (int64 bits).
    """
    n = len(cat)
    dib_ew = dib_equivalent_width(cat.AK_TRUE.to_numpy(), p.dib_strength) * np.exp(
        p.dib_scatter * geom.standard_normal(n))
    tell_amp = p.telluric_residual * geom.standard_normal(n)
    sky_amp = p.sky_residual * geom.standard_normal(n)
    persist = geom.random(n) < p.persistence_fraction
    persist_amp = np.where(persist, p.persistence_amplitude * geom.exponential(1.0, n), 0.0)
    starflag = np.zeros(n, np.int64)
    starflag |= np.where(persist_amp > 0.04, 1 << 9, 0)
    starflag |= np.where((persist_amp > 0.015) & (persist_amp <= 0.04), 1 << 10, 0)
    starflag |= np.where((persist_amp > 0) & (persist_amp <= 0.015), 1 << 11, 0)
    return {"DIB_EW": dib_ew, "TELLURIC_AMP": tell_amp, "SKY_AMP": sky_amp,
            "PERSISTENCE_AMP": persist_amp, "STARFLAG": starflag}


def _measured_labels(p: SurveyParams, cat: pd.DataFrame, ids: np.ndarray, labels: dict,
                     obs: dict, starflag: np.ndarray):
    """The allStar table: what ASPCAP would measure, with flags and missing abundances.

    Book: {ref}`sec-measured`

    Labels and abundances are measured with noise and the synthetic gap
    (:func:`helpers.survey.chemistry.measure_labels`), some abundances are missing
    (:func:`helpers.survey.chemistry.missing_mask`; the five DR16 elements the model does
    not follow are mostly missing), and a fraction of stars, twice as many below S/N 70, is
    flagged bad in ASPCAPFLAG (STAR_BAD and STAR_WARN).  Draws from the ``meas`` stream.

    Parameters
    ----------
    cat : pandas.DataFrame, N rows
        The catalogue so far (TELESCOPE, FIELD).
    ids : ndarray of str, shape (N,)
    labels : dict of ndarray
        True labels from :func:`_field_stars` and :func:`_place_clusters`.
    obs : dict of ndarray
        From :func:`_observing_conditions`.
    starflag : ndarray of int64, shape (N,)

    Returns
    -------
    allstar : pandas.DataFrame, N rows
    fe_meas : ndarray, shape (N,)
        Measured [Fe/H] (dex), before the float32 cast of the table.
    missing : ndarray of bool, shape (N, n_elements)
        The model elements whose abundance is missing.
    star_bad : ndarray of bool, shape (N,)
    """
    n = len(cat)
    teff, logg, feh, alpha = labels["teff"], labels["logg"], labels["feh"], labels["alpha"]
    snr = obs["SNR"]
    mrng = np.random.default_rng([p.seed, STREAMS["meas"]])
    meas = chem.measure_labels(teff, logg, feh, labels["x_fe"], snr, mrng,
                               synthetic_gap=p.synthetic_gap)
    miss = chem.missing_mask(n, snr, mrng, p.missing_abundance_fraction)
    x_h_model = np.where(miss, apogee.MISSING, meas["x_h"])
    p_bad = p.star_bad_fraction * np.where(snr < 70, 2.0, 0.85)
    star_bad = mrng.random(n) < p_bad
    aspcapflag = np.where(star_bad, (1 << 23) | (1 << 7), 0).astype(np.int64)
    elems = list(apogee.DR16_ELEM_SYMBOL)
    x_h = np.full((n, len(elems)), apogee.MISSING, np.float32)
    for j, e in enumerate(elems):
        if e in chem.ELEMENTS:
            x_h[:, j] = x_h_model[:, chem.ELEMENTS.index(e)]
        else:  # P, Ge, Rb, Nd, Yb: poorly measured, mostly missing in DR16
            v = feh + 0.15 * mrng.standard_normal(n)
            x_h[:, j] = np.where(mrng.random(n) < 0.6, apogee.MISSING, v)
    fe_meas = meas["feh"]
    alpha_meas = alpha + 0.02 * mrng.standard_normal(n)
    allstar = pd.DataFrame({
        "APOGEE_ID": ids, "TELESCOPE": cat.TELESCOPE.to_numpy().astype(str),
        "FIELD": cat.FIELD.to_numpy().astype(str),
        "TEFF": meas["teff"].astype(np.float32), "LOGG": meas["logg"].astype(np.float32),
        "FE_H": fe_meas.astype(np.float32), "M_H": fe_meas.astype(np.float32),
        "ALPHA_M": alpha_meas.astype(np.float32),
        "ASPCAPFLAG": aspcapflag, "STARFLAG": starflag,
        "AK_TARG": obs["AK_TARG"].astype(np.float32),
        "VHELIO_AVG": obs["VHELIO_AVG"].astype(np.float32),
        "VSCATTER": obs["VSCATTER"].astype(np.float32), "SNR": snr.astype(np.float32),
        "NVISITS": obs["NVISITS"].astype(np.int32), "VISITS": obs["VISITS"],
    })
    allstar["X_H"] = list(x_h)  # array column
    return allstar, fe_meas, miss, star_bad


def _occam_members(p: SurveyParams, cat: pd.DataFrame, ids: np.ndarray, vhelio: np.ndarray,
                   fe_meas: np.ndarray) -> pd.DataFrame:
    """The OCCAM-like member file: every star seen towards a cluster, with membership
    probabilities from velocity, metallicity, proper motion and Gaia (CG_PROB).

    Book: {ref}`sec-clusters`

    Parameters
    ----------
    cat : pandas.DataFrame, N rows
        The catalogue (CLUSTER, IS_MEMBER, IN_OCCAM_FILE).
    ids : ndarray of str, shape (N,)
    vhelio, fe_meas : ndarray, shape (N,)
        Measured velocity (km/s) and [Fe/H] (dex).

    Returns
    -------
    pandas.DataFrame
        One row per star in the member file (empty, with the required columns, without
        clusters).
    """
    occ = np.flatnonzero(cat.IN_OCCAM_FILE.to_numpy())
    if not occ.size:
        return pd.DataFrame({c: [] for c in apogee.OCCAM_MEMBER_REQUIRED})
    orng = np.random.default_rng([p.seed, STREAMS["cluster"], 2])
    mem = cat.IS_MEMBER.to_numpy()[occ]
    u = orng.random(occ.size)
    # True members: 94% with a confident Gaia membership (CG_PROB > 0.8), the rest
    # low or unmatched, so the selection can keep >= 90% of the true members that
    # pass the cuts (chapter 3 checks it); non-members: 30% get past the 0.8 cut.
    cg = np.where(mem,
                  np.where(u < 0.94, orng.uniform(0.8, 1.0, occ.size),
                           np.where(u < 0.97, orng.uniform(0.0, 0.8, occ.size),
                                    apogee.MISSING)),
                  np.where(u < 0.3, orng.uniform(0.8, 1.0, occ.size),
                           np.where(u < 0.8, orng.uniform(0.0, 0.6, occ.size),
                                    apogee.MISSING)))
    return pd.DataFrame({
        "CLUSTER": cat.CLUSTER.to_numpy()[occ].astype(str),
        "APOGEE_ID": ids[occ],
        "VHELIO_AVG": vhelio[occ].astype(np.float32),
        "FE_H": fe_meas[occ].astype(np.float32),
        "RV_PROB": np.where(mem, orng.uniform(0.7, 1.0, occ.size),
                            orng.uniform(0.2, 0.9, occ.size)).astype(np.float32),
        "FEH_PROB": np.where(mem, orng.uniform(0.7, 1.0, occ.size),
                             orng.uniform(0.1, 0.9, occ.size)).astype(np.float32),
        "PM_PROB": np.where(mem, orng.uniform(0.6, 1.0, occ.size),
                            orng.uniform(0.0, 0.8, occ.size)).astype(np.float32),
        "CG_PROB": cg.astype(np.float32),
    })


def _truth_arrays(cat: pd.DataFrame, ids: np.ndarray, labels: dict, obs: dict, imprints: dict,
                  miss: np.ndarray, star_bad: np.ndarray) -> dict:
    """The ground truth of every star, kept for checking methods (``truth.npz``).

    Book: {ref}`sec-truth`

    Parameters
    ----------
    cat : pandas.DataFrame, N rows
    ids : ndarray of str, shape (N,)
    labels, obs, imprints : dict of ndarray
        From :func:`_field_stars`/:func:`_place_clusters`, :func:`_observing_conditions`
        and :func:`_imprint_amplitudes`.
    miss, star_bad : ndarray of bool
        From :func:`_measured_labels`.

    Returns
    -------
    dict of ndarray
        True labels (TEFF in K, LOGG, FE_H, ALPHA_M, X_FE in dex), LATENT, membership,
        AK_TRUE (mag), DIB_EW, V_ISM and VHELIO_TRUE (km/s), PLATE, PLATE_IDX, SNR_TRUE, the
        imprint amplitudes, STAR_BAD and MISSING; rows in catalogue order.
    """
    pl = cat.PLATE_IDX.to_numpy()
    return {
        "APOGEE_ID": ids, "TEFF": labels["teff"], "LOGG": labels["logg"], "FE_H": labels["feh"],
        "ALPHA_M": labels["alpha"], "X_FE": labels["x_fe"], "LATENT": labels["latent"],
        "CLUSTER": cat.CLUSTER.to_numpy().astype(str),
        "IS_MEMBER": cat.IS_MEMBER.to_numpy(bool),
        "IN_OCCAM_FILE": cat.IN_OCCAM_FILE.to_numpy(bool),
        "AK_TRUE": cat.AK_TRUE.to_numpy(), "DIB_EW": imprints["DIB_EW"],
        "V_ISM": cat.V_ISM.to_numpy(), "VHELIO_TRUE": cat.VHELIO_TRUE.to_numpy(),
        "PLATE": obs["PLATE"][pl], "PLATE_IDX": pl, "SNR_TRUE": obs["SNR"],
        "TELLURIC_AMP": imprints["TELLURIC_AMP"], "SKY_AMP": imprints["SKY_AMP"],
        "PERSISTENCE_AMP": imprints["PERSISTENCE_AMP"],
        "STAR_BAD": star_bad, "MISSING": miss,
    }


def occam_cluster_table(occ: pd.DataFrame, truth: dict) -> pd.DataFrame:
    """The OCCAM-like cluster catalogue: the 22 clusters with their member counts in the survey.

    Book: {ref}`sec-clusters`
    """
    table = chem.load_cluster_table()
    names = truth["CLUSTER"][truth["IN_OCCAM_FILE"] & truth["IS_MEMBER"]]
    counts = pd.Series(names).value_counts()
    out = pd.DataFrame({"NAME": table.NAME.astype(str),
                        "RV": table.RV.astype(np.float32),
                        "FE_H": table.FE_H.astype(np.float32),
                        "NUM_STARS": [int(counts.get(n, 0)) for n in table.NAME],
                        "QUAL": table.QUAL.astype(np.int16)})
    for c in table.columns:
        if c.endswith("_FE"):
            out[c] = table[c].astype(np.float32)
    return out
