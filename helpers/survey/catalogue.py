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
    """
    model = chem.chemical_model(p.n_latent, p.intrinsic_scatter)
    geom = np.random.default_rng([p.seed, STREAMS["geom"]])
    # --- field stars, grouped in fields and plates ---------------------------------
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
    teff, logg, feh, alpha = fld["teff"], fld["logg"], fld["feh"], fld["alpha_m"]
    latent, x_fe = fld["latent"], fld["x_fe"]
    ids = twomass_ids(n_f, geom)
    frames = [pd.DataFrame(cols)]
    # --- clusters ----------------------------------------------------------------
    if p.include_clusters:
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
        frames[0] = pd.DataFrame(cols)
        teff = np.concatenate([teff, cl.teff.to_numpy()])
        logg = np.concatenate([logg, cl.logg.to_numpy()])
        feh = np.concatenate([feh, cl.feh.to_numpy()])
        alpha = np.concatenate([alpha, cl.alpha_m.to_numpy()])
        latent = np.vstack([latent, np.stack(cl.latent.to_numpy())])
        x_fe = np.vstack([x_fe, np.stack(cl.x_fe.to_numpy())])
        ids = np.concatenate([ids, c_ids.astype(str)])
        frames.append(pd.DataFrame({
            "FIELD": c_field.astype(str), "TELESCOPE": "apo25m", "PLATE_IDX": c_plate,
            "AK_TRUE": c_ak, "V_ISM": c_vism, "VHELIO_TRUE": cl.RV_TRUE.to_numpy(),
            "CLUSTER": cl.CLUSTER.to_numpy(), "IS_MEMBER": cl.IS_MEMBER.to_numpy(bool),
            "IN_OCCAM_FILE": np.ones(n_c, bool)}))
    cat = pd.concat(frames, ignore_index=True)
    n = len(cat)
    ids = _unique_ids(ids, geom)
    # the star the paper excludes: an NGC 6791 member inside the cuts
    if p.include_clusters:
        cand = np.flatnonzero((cat.CLUSTER.to_numpy() == "NGC 6791") & cat.IS_MEMBER.to_numpy()
                              & (teff > 4100) & (teff < 4900) & (logg > 1.7) & (logg < 2.8))
        if cand.size:
            ids[ids == EXCLUDED_STAR] = twomass_ids(1, geom)[0]
            ids[cand[0]] = EXCLUDED_STAR
    cat["APOGEE_ID"] = ids
    # --- observing: S/N, visits, imprint amplitudes --------------------------------
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
    # --- measured labels ---------------------------------------------------------
    mrng = np.random.default_rng([p.seed, STREAMS["meas"]])
    meas = chem.measure_labels(teff, logg, feh, x_fe, snr, mrng, synthetic_gap=p.synthetic_gap)
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
        "AK_TARG": ak_targ.astype(np.float32), "VHELIO_AVG": vhelio.astype(np.float32),
        "VSCATTER": vscatter.astype(np.float32), "SNR": snr.astype(np.float32),
        "NVISITS": nvis.astype(np.int32), "VISITS": visits,
    })
    allstar["X_H"] = list(x_h)  # array column
    # --- OCCAM member file ---------------------------------------------------------
    occ = np.flatnonzero(cat.IN_OCCAM_FILE.to_numpy())
    if occ.size:
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
        occ_df = pd.DataFrame({
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
    else:
        occ_df = pd.DataFrame({c: [] for c in apogee.OCCAM_MEMBER_REQUIRED})
    truth = {
        "APOGEE_ID": ids, "TEFF": teff, "LOGG": logg, "FE_H": feh, "ALPHA_M": alpha,
        "X_FE": x_fe, "LATENT": latent,
        "CLUSTER": cat.CLUSTER.to_numpy().astype(str),
        "IS_MEMBER": cat.IS_MEMBER.to_numpy(bool),
        "IN_OCCAM_FILE": cat.IN_OCCAM_FILE.to_numpy(bool),
        "AK_TRUE": cat.AK_TRUE.to_numpy(), "DIB_EW": dib_ew,
        "V_ISM": cat.V_ISM.to_numpy(), "VHELIO_TRUE": cat.VHELIO_TRUE.to_numpy(),
        "PLATE": plate_ids[pl], "PLATE_IDX": pl, "SNR_TRUE": snr,
        "TELLURIC_AMP": tell_amp, "SKY_AMP": sky_amp, "PERSISTENCE_AMP": persist_amp,
        "STAR_BAD": star_bad, "MISSING": miss,
    }
    return allstar, truth, occ_df


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
