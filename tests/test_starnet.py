"""StarNet helpers: split, labels, data sets, model, training, inference, evaluation."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.starnet import (ESSAY_CONFIG, LABEL_NAMES, PRECISIONS, STARNET_ELEMENTS, LabelScaler,
                             ModalitySpectra, bf16_instructions, training_step_seconds,
                             unit_rms_scale,
                             SplitOverlapError, StarNet, StarnetSource, StarSplit, TrainConfig,
                             aspcap_labels, calibration, centred_rms, embed, fast_allocation,
                             fit_ridge, label_metrics, pixel_rms, predict_ensemble, train_ensemble,
                             load_split, make_split, observed_pixels, predict,
                             reference_sequential, starnet_data, starnet_split, torch_threads,
                             train_epoch, train_starnet, true_labels)


# ---------------------------------------------------------------------------------------
# a small source built in memory: labels drive the flux linearly, plus noise
# ---------------------------------------------------------------------------------------

def _fake_source(n=160, n_pix=(90, 60), seed=0, missing_label_col=None):
    rng = np.random.default_rng(seed)
    ids = np.array([f"2M{i:08d}+0000000" for i in range(n)])
    teff = rng.uniform(4000, 5000, n)
    logg = rng.uniform(1.5, 3.0, n)
    feh = rng.normal(-0.2, 0.25, n)
    truth = {"TEFF": teff, "LOGG": logg, "FE_H": feh}
    cat = {"APOGEE_ID": ids, "TEFF": teff + rng.normal(0, 50, n),
           "LOGG": logg + rng.normal(0, 0.05, n), "FE_H": feh + rng.normal(0, 0.02, n),
           "SNR": rng.uniform(50, 300, n)}
    for el in STARNET_ELEMENTS:
        if el == "Fe":
            continue
        xfe = rng.normal(0, 0.1, n)
        truth[f"X_FE_{el}"] = xfe
        cat[f"X_H_{el}"] = xfe + feh + rng.normal(0, 0.03, n)
    cat["X_H_Ce"][:5] = -9999.99
    if missing_label_col:
        del cat[missing_label_col]
    truth = pd.DataFrame(truth)
    cat = pd.DataFrame(cat)
    y = true_labels(truth)
    z = (y - y.mean(0)) / y.std(0)
    spectra = {}
    for k, (name, p) in enumerate(zip(("apogee", "nirspec"), n_pix)):
        a = np.random.default_rng(seed + 10 + k).normal(0, 0.02, (y.shape[1], p))
        flux = (0.8 + z @ a + rng.normal(0, 0.005, (n, p))).astype(np.float32)
        error = np.full((n, p), 0.005, np.float32)
        flux[:, :3] = 0          # a gap: always missing
        error[:, :3] = 0
        flux[1, 10] = 1e-4       # a flagged pixel
        error[1, 10] = 1e10
        order = rng.permutation(n)  # spectra stored in another order than the catalogue
        spectra[name] = ModalitySpectra(name, flux[order], error[order],
                                        np.linspace(15000 + 5000 * k, 17000 + 5000 * k, p),
                                        ids[order], order, cat["SNR"].to_numpy()[order])
    return StarnetSource(key=f"fake-{seed}-{n}", kind="synthetic", catalogue=cat, truth=truth,
                         spectra=spectra, paired_ids=np.sort(ids))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------------------

def test_split_sizes_paper_scale():
    ids = [f"2M{i:08d}" for i in range(19_000)]
    s = make_split(ids, seed=0)
    assert s.sizes == {"train": 11_875, "val": 2_375, "test": 4_750}


def test_split_is_disjoint_covering_seeded_and_order_free():
    ids = np.array([f"2M{i:06d}" for i in range(1000)])
    a = make_split(ids, seed=3)
    b = make_split(ids[::-1], seed=3)
    c = make_split(ids, seed=4)
    parts = [a.train, a.val, a.test]
    allids = np.concatenate(parts)
    assert allids.size == ids.size and np.unique(allids).size == ids.size
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.intersect1d(parts[i], parts[j]).size == 0
    assert a == b and a.key == b.key
    assert a.key != c.key


def test_overlapping_split_is_refused(tmp_path):
    with pytest.raises(SplitOverlapError, match="both 'train' and 'test'"):
        StarSplit(["a", "b"], ["c"], ["b", "d"])
    with pytest.raises(SplitOverlapError, match="more than once"):
        StarSplit(["a", "a"], ["c"], ["d"])
    with pytest.raises(SplitOverlapError, match="more than once"):
        make_split(["a", "b", "b", "c"], seed=0)
    # a split file edited so that a test star is also a training star
    s = make_split([f"s{i}" for i in range(40)], seed=0)
    d = json.loads(s.to_json())
    d["train"].append(d["test"][0])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SplitOverlapError, match="split overlaps"):
        load_split(p)


def test_split_written_once_and_reused(cache):
    src = _fake_source()
    s1 = starnet_split(src, seed=5)
    mtime = s1.path.stat().st_mtime_ns
    s2 = starnet_split(src, seed=5)
    assert s1 == s2 and s2.path == s1.path and s1.path.stat().st_mtime_ns == mtime
    assert s1.path.parent.name == src.key
    # the stored file wins over a fresh draw, and must belong to the source
    other = _fake_source(n=100)
    other.key = src.key
    with pytest.raises(ValueError, match="belongs to other data"):
        starnet_split(other, seed=5)


# ---------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------

def test_label_names_and_kinds():
    assert len(LABEL_NAMES) == 20 and LABEL_NAMES[:2] == ("TEFF", "LOGG")
    assert "FE_H" in LABEL_NAMES and len(STARNET_ELEMENTS) == 18
    src = _fake_source()
    y = aspcap_labels(src.catalogue)
    assert y.shape == (160, 20) and np.isnan(y[:5, LABEL_NAMES.index("CE_H")]).all()
    t = true_labels(src.truth)
    j = LABEL_NAMES.index("MG_H")
    assert np.allclose(t[:, j], src.truth["X_FE_Mg"] + src.truth["FE_H"], atol=1e-6)


def test_missing_label_column_is_named():
    src = _fake_source(missing_label_col="X_H_Mg")
    with pytest.raises(ValueError, match="X_H_Mg"):
        aspcap_labels(src.catalogue)


def test_label_scaler_ignores_missing_and_round_trips():
    y = np.random.default_rng(0).normal(size=(50, 20))
    y[3, 4] = np.nan
    s = LabelScaler.fit(y)
    z = s.transform(y)
    assert np.isnan(z[3, 4]) and np.allclose(np.nanmean(z, 0), 0, atol=1e-6)
    s2 = LabelScaler.from_json(s.to_json())
    assert np.allclose(s2.inverse(z), y, equal_nan=True)


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_pixels,chunk", [(8575, 16), (130, 4), (1001, 1)])
def test_fast_block_equals_plain_torch_layers(n_pixels, chunk):
    torch.manual_seed(1)
    model = StarNet(n_pixels).double()
    model.chunk = chunk                    # 6 spectra: one chunk, 4 + 2, or one at a time
    ref = reference_sequential(n_pixels).double()
    ref.load_state_dict(model.reference_state_dict())
    x = torch.rand(6, n_pixels, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = model(x), ref(x_ref)
    assert torch.allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    ref_grads = dict(ref.named_parameters())
    for name, idx in (("conv1", "1"), ("conv2", "3"), ("fc2", "9"), ("fc3", "11")):
        for kind in ("weight", "bias"):
            a = getattr(getattr(model, name), kind).grad
            b = ref_grads[f"{idx}.{kind}"].grad
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (name, kind)
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)    # saliency works too


@pytest.mark.parametrize("dtype,tol,threads", [(torch.float64, 1e-9, 2),
                                               (torch.float32, 2e-4, 1),
                                               (torch.float32, 2e-4, 2)])
def test_book_training_loop_equals_plain_torch_loop(cache, dtype, tol, threads):
    """Same seed, same batches: the book's loop (its convolution block, fused AdamW, heap
    reuse; on one and on two threads) trains the same network as a plain
    ``torch.nn`` loop with for-each AdamW, up to float rounding (double: to 1e-9; single: to
    2e-4, a fifth of one AdamW step of lr 1e-3, after 12 steps: Adam's normalised steps
    amplify rounding, which differs with the number of threads; a wrong gradient moves
    weights by about lr per step)."""
    with torch_threads(threads):
        _book_vs_plain(dtype, tol)


def _book_vs_plain(dtype, tol):
    src = _fake_source()
    split = starnet_split(src, seed=0)
    tr = starnet_data(src, split, "apogee")["train"]
    z = LabelScaler.fit(src.labels(tr.ids, "true")).transform(src.labels(tr.ids, "true"))
    w = torch.from_numpy(np.isfinite(z)).to(dtype)
    z = torch.from_numpy(np.nan_to_num(z)).to(dtype)
    torch.manual_seed(3)
    book = StarNet(tr.n_pixels).to(dtype)
    plain = reference_sequential(tr.n_pixels).to(dtype)
    start = book.reference_state_dict()
    plain.load_state_dict(start)
    head = torch.nn.Linear(128, 20).to(dtype)
    head.load_state_dict(book.logvar.state_dict())
    opt_b = torch.optim.AdamW(book.parameters(), lr=1e-3, fused=True)
    opt_p = torch.optim.AdamW([*plain.parameters(), *head.parameters()], lr=1e-3, foreach=True)
    gen_b, gen_p = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    batch, losses_b, losses_p = 16, [], []
    for epoch in range(2):
        with fast_allocation():
            losses_b.append(train_epoch(book, opt_b, tr, z, w, batch, gen_b))
        perm = torch.randperm(len(tr), generator=gen_p).numpy()
        total = 0.0
        for b in range(len(tr) // batch):
            idx = np.sort(perm[b * batch:(b + 1) * batch])
            hidden = plain[:-1](torch.from_numpy(np.asarray(tr.flux[idx])).to(dtype))
            mu, logvar = plain[-1](hidden), head(hidden.detach())
            yb, wb = z[idx], w[idx]
            mse = (wb * (mu - yb) ** 2).sum() / wb.sum()
            nll = (wb * 0.5 * (logvar + (yb - mu.detach()) ** 2 * torch.exp(-logvar))).sum() \
                / wb.sum()
            opt_p.zero_grad()
            (mse + nll).backward()
            opt_p.step()
            total += float(mse.detach())
        losses_p.append(total / (len(tr) // batch))
    assert np.allclose(losses_b, losses_p, rtol=tol, atol=0)
    trained = book.reference_state_dict()
    for k, v in plain.state_dict().items():
        assert torch.allclose(trained[k], v, rtol=tol, atol=tol), k
    assert torch.allclose(book.logvar.weight.detach(), head.weight.detach(), rtol=tol, atol=tol)
    # and they did train: every layer moved from its start
    for k, v in trained.items():
        assert not torch.allclose(v, start[k], atol=1e-5), k


def test_model_refuses_spectra_on_another_grid():
    model = StarNet(200)
    with pytest.raises(ValueError, match="another grid"):
        model(torch.zeros(2, 199))
    with pytest.raises(ValueError, match="n_pixels"):
        StarNet(10)


# ---------------------------------------------------------------------------------------
# data sets
# ---------------------------------------------------------------------------------------

def test_observed_pixels():
    f = np.array([[1.0, 0.0, np.nan, 0.9, 0.9]], np.float32)
    e = np.array([[0.01, 0.01, 0.01, 1e10, 0.2]], np.float32)
    assert observed_pixels(f, e, None).tolist() == [[True, False, False, False, True]]
    assert observed_pixels(f, e, 0.05).tolist() == [[True, False, False, False, False]]
    assert observed_pixels(f, None, 0.05).tolist() == [[True, False, False, True, True]]


def test_data_sets_line_up_fill_and_cache(cache):
    src = _fake_source()
    split = starnet_split(src, seed=0)
    a = starnet_data(src, split, "apogee", max_error=0.05)
    n = starnet_data(src, split, "nirspec")
    for part in ("train", "val", "test"):
        assert list(a[part].ids) == list(split.part(part)) == list(n[part].ids)
        spec = src.spectra["apogee"]
        rows = spec.rows_of(a[part].ids)
        raw = np.asarray(spec.flux[rows])
        obs = observed_pixels(raw, spec.error[rows], 0.05)
        assert np.array_equal(a[part].observed, obs)
        assert np.array_equal(a[part].flux[obs], raw[obs])
        assert np.allclose(a[part].flux[~obs], np.broadcast_to(a[part].fill, raw.shape)[~obs])
    tr = src.spectra["apogee"]
    raw = np.asarray(tr.flux[tr.rows_of(split.train)])
    ok = observed_pixels(raw, tr.error[tr.rows_of(split.train)], 0.05)
    mean = np.where(ok, raw, 0).sum(0) / np.maximum(ok.sum(0), 1)
    assert np.allclose(a["train"].fill[ok.any(0)], mean[ok.any(0)], atol=1e-6)
    assert np.all(a["train"].fill[~ok.any(0)] == 1)
    again = starnet_data(src, split, "apogee", max_error=0.05)
    assert again["train"].path == a["train"].path


# ---------------------------------------------------------------------------------------
# training and inference
# ---------------------------------------------------------------------------------------

def test_bad_epoch_count_is_named():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="epochs"):
            TrainConfig(epochs=bad)


def test_training_is_reproducible_cached_and_calibrated(cache):
    src = _fake_source()
    split = starnet_split(src, seed=0)
    cfg = TrainConfig(epochs=3, batch_size=16, step_size=2, seed=7)
    run = train_starnet(src, split, "apogee", "true", cfg, progress=False)
    again = train_starnet(src, split, "apogee", "true", cfg, progress=False, retrain=True)
    assert again.path == run.path
    h1, h2 = run.history, again.history
    assert np.array_equal(h1[["train_loss", "val_loss"]].to_numpy(),
                          h2[["train_loss", "val_loss"]].to_numpy())
    for (k, v1), v2 in zip(run.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert h1["train_loss"].iloc[-1] < h1["train_loss"].iloc[0]
    assert list(h1["lr"]) == pytest.approx([1e-3, 1e-3, 1e-4])
    # another seed is another run
    other = train_starnet(src, split, "apogee", "true", TrainConfig(epochs=1, batch_size=16,
                                                                    seed=8), progress=False)
    assert other.path != run.path
    # predictions: physical units, positive sigmas, the validation calibration holds there
    data = starnet_data(src, split, "apogee")
    p = predict(run, data["val"])
    y = src.labels(data["val"].ids, "true")
    cal = calibration(p.mean, p.sigma, y, LABEL_NAMES)
    assert np.allclose(cal["z_rms"], 1, atol=1e-3)
    assert np.all(p.sigma > 0) and abs(np.mean(p.mean[:, 0]) - 4500) < 400
    assert embed(run, data["test"]).shape == (len(data["test"]), 20)
    assert embed(run, data["test"], layer="hidden").shape == (len(data["test"]), 128)


def test_train_config_key_leaves_out_threads_and_float32():
    old_fields = {"epochs", "batch_size", "lr", "weight_decay", "step_size", "gamma", "seed",
                  "input_scaling"}
    # float32 runs cached before the precision field existed keep their keys
    assert set(TrainConfig(precision="float32").key_dict()) == old_fields
    # the default is mixed precision, and it is in the key
    assert TrainConfig().precision == "bf16-fc"
    assert TrainConfig().key_dict() == {**TrainConfig(precision="float32").key_dict(),
                                        "precision": "bf16-fc"}
    assert ESSAY_CONFIG.precision == "float32"
    assert TrainConfig(threads=1).key_dict() == TrainConfig().key_dict()
    assert TrainConfig(threads=1).to_dict()["threads"] == 1
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads"):
            TrainConfig(threads=bad)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float16")


def test_thread_count_changes_no_number_and_is_not_in_the_key(cache):
    """One and two torch threads train the same run (same key, same folder) to the same
    numbers up to float rounding (the tolerance of the book-vs-plain loop test), and the
    caller's thread setting is restored."""
    src = _fake_source()
    split = starnet_split(src, seed=0)
    before = torch.get_num_threads()
    runs = {}
    for precision in PRECISIONS:
        for t in (1, 2):
            cfg = TrainConfig(epochs=2, batch_size=16, step_size=1, seed=4, threads=t,
                              precision=precision)
            runs[t] = train_starnet(src, split, "apogee", "true", cfg, progress=False,
                                    retrain=True)
            assert torch.get_num_threads() == before
            assert runs[t].meta["n_threads"] == t
        assert runs[1].path == runs[2].path and runs[1].meta["key"] == runs[2].meta["key"]
        h1, h2 = runs[1].history, runs[2].history
        assert np.allclose(h1[["train_loss", "val_loss"]], h2[["train_loss", "val_loss"]],
                           rtol=2e-4, atol=0), precision
        for (k, a), b in zip(runs[1].model.state_dict().items(),
                             runs[2].model.state_dict().values()):
            assert torch.allclose(a, b, rtol=2e-4, atol=2e-4), (precision, k)


def test_bf16_fully_connected_layers_train_in_bfloat16_and_predict_in_float32(cache):
    torch.manual_seed(2)
    fp32, bf16 = StarNet(300), StarNet(300, precision="bf16-fc")
    bf16.load_state_dict(fp32.state_dict())
    x = torch.randn(8, 300)
    # training mode: bfloat16 products (about 3 significant digits), float32 outputs
    fp32.train(), bf16.train()
    (m32, v32), (m16, v16) = fp32.predict_with_logvar(x), bf16.predict_with_logvar(x)
    assert m16.dtype == v16.dtype == bf16.hidden(x).dtype == torch.float32
    rel = float((m16 - m32).detach().abs().max() / m32.detach().abs().max())
    assert 1e-5 < rel < 3e-2, rel
    # evaluation mode: float32 whatever the setting
    fp32.eval(), bf16.eval()
    assert torch.equal(bf16(x), fp32(x))
    with pytest.raises(ValueError, match="precision"):
        StarNet(300, precision="bf16")
    # a bf16 run is its own cached run, and it trains
    src = _fake_source()
    split = starnet_split(src, seed=0)
    cfg = dict(epochs=2, batch_size=16, step_size=2, seed=1)
    run32 = train_starnet(src, split, "apogee", "true", TrainConfig(**cfg, precision="float32"),
                          progress=False)
    run16 = train_starnet(src, split, "apogee", "true", TrainConfig(**cfg, precision="bf16-fc"),
                          progress=False)
    assert run16.path != run32.path and run16.meta["config"]["precision"] == "bf16-fc"
    assert run16.history["train_loss"].iloc[-1] < run16.history["train_loss"].iloc[0]
    assert np.allclose(run16.history["val_loss"], run32.history["val_loss"], rtol=0.2)


def test_unit_rms_scale_leaves_out_missing_labels():
    z = np.array([[1.0, 2.0, np.nan], [-3.0, np.nan, np.nan], [np.nan, 2.0, np.nan]])
    assert np.allclose(unit_rms_scale(z), [np.sqrt(5.0), 2.0, 1.0])
    # the scale turns the errors into unit-RMS ones
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3.0, (500, 2))
    assert np.allclose(np.sqrt(np.mean((z / unit_rms_scale(z)) ** 2, axis=0)), 1.0)


def test_bf16_instructions_reads_the_feature_flags(tmp_path):
    x86 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f {}\n\nprocessor\t: 1\n"
    for extra, expected in (("avx512_bf16 avx512_vnni", True), ("amx_bf16", True),
                            ("avx512_vnni", False)):
        f = tmp_path / "cpuinfo"
        f.write_text(x86.format(extra))
        assert bf16_instructions(f) is expected
    f.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")      # 64-bit ARM
    assert bf16_instructions(f) is True
    f.write_text("nothing useful\n")
    assert bf16_instructions(f) is None
    assert bf16_instructions(tmp_path / "absent") is None


def test_training_step_seconds_times_every_precision(cache):
    src = _fake_source()
    split = starnet_split(src, seed=0)
    tr = starnet_data(src, split, "apogee")["train"]
    before = torch.get_num_threads()
    out = training_step_seconds(tr, PRECISIONS, batches=2, rounds=2, batch_size=16, threads=1)
    assert torch.get_num_threads() == before
    assert set(out) == {*PRECISIONS, "load"} and len(out["load"]) == 2
    assert all(0 < out[p] < 10 for p in PRECISIONS)
    only = training_step_seconds(tr, ["float32"], batches=1, rounds=1, batch_size=8)
    assert set(only) == {"float32", "load"}
    for kwargs, match in ((dict(precisions=["float16"]), "precisions"),
                          (dict(precisions=[]), "precisions"),
                          (dict(batches=0), "batches"), (dict(rounds=1.5), "rounds"),
                          (dict(batch_size=len(tr) + 1), "batch_size")):
        with pytest.raises(ValueError, match=match):
            training_step_seconds(tr, **kwargs)


def test_centred_input_scaling_is_saved_and_maps_missing_pixels_to_zero(cache):
    src = _fake_source()
    split = starnet_split(src, seed=0)
    data = starnet_data(src, split, "apogee")
    tr = data["train"]
    # the RMS of (flux - training mean) over observed pixels, computed directly
    d = np.asarray(tr.flux, np.float64) - tr.fill
    ok = np.asarray(tr.observed)
    assert centred_rms(tr, chunk=7) == pytest.approx(np.sqrt(np.mean(d[ok] ** 2)), rel=1e-9)
    cfg = TrainConfig(epochs=1, batch_size=16)
    run = train_starnet(src, split, "apogee", "true", cfg, progress=False)
    m = run.model
    assert np.allclose(m.input_mean.numpy(), tr.fill)
    assert m.input_scale[0].item() == pytest.approx(1 / centred_rms(tr), rel=1e-6)
    # a filled (missing) pixel reaches the first convolution as exactly 0
    x = torch.from_numpy(np.array(tr.flux[:4]))
    xs = (x - m.input_mean) * m.input_scale
    assert torch.all(xs[~torch.from_numpy(np.asarray(tr.observed[:4]))] == 0)
    # the scaling is part of the saved weights: the loaded run predicts as the trained one
    again = train_starnet(src, split, "apogee", "true", cfg, progress=False)
    assert torch.equal(again.model.input_scale, m.input_scale)
    assert np.array_equal(predict(again, data["test"]).mean, predict(run, data["test"]).mean)
    # the essay's choice is one field away, and a different run
    plain = train_starnet(src, split, "apogee", "true",
                          TrainConfig(epochs=1, batch_size=16, input_scaling="none"),
                          progress=False)
    assert plain.path != run.path and torch.all(plain.model.input_scale == 1)
    with pytest.raises(ValueError, match="input_scaling"):
        TrainConfig(input_scaling="zscore")


def test_pixel_input_scaling_standardises_each_observed_pixel(cache):
    src = _fake_source()
    split = starnet_split(src, seed=0)
    tr = starnet_data(src, split, "apogee")["train"]
    d = np.asarray(tr.flux, np.float64) - tr.fill
    ok = np.asarray(tr.observed)
    rms = pixel_rms(tr, chunk=7)
    j = 20                                     # an ordinary pixel: its RMS over observed stars
    assert rms[j] == pytest.approx(np.sqrt(np.mean(d[ok[:, j], j] ** 2)), rel=1e-9)
    assert np.all(rms[:3] == pytest.approx(centred_rms(tr)))   # never observed: the global RMS
    run = train_starnet(src, split, "apogee", "true",
                        TrainConfig(epochs=1, batch_size=16, input_scaling="pixel"), progress=False)
    assert np.allclose(run.model.input_scale.numpy(), 1 / rms, rtol=1e-6)
    xs = (torch.from_numpy(np.array(tr.flux)).double() - run.model.input_mean.double()) \
        * run.model.input_scale.double()
    assert np.sqrt(np.mean(xs.numpy()[ok[:, j], j] ** 2)) == pytest.approx(1, rel=1e-5)


def test_ensemble_averages_members_and_calibrates_on_validation(cache):
    src = _fake_source()
    split = starnet_split(src, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=16, seed=3)
    ens = train_ensemble(src, split, "apogee", "true", cfg, members=2, progress=False)
    assert [r.meta["config"]["seed"] for r in ens.runs] == [3, 4]
    # member 0 is the single run of the same recipe (same cache key)
    assert ens.runs[0].path == train_starnet(src, split, "apogee", "true", cfg, progress=False).path
    data = starnet_data(src, split, "apogee")
    p = predict_ensemble(ens, data["test"])
    members = [predict(r, data["test"]) for r in ens.runs]
    assert np.allclose(p.mean, (members[0].mean + members[1].mean) / 2)
    mix = (members[0].sigma ** 2 + members[1].sigma ** 2) / 2 \
        + ((members[0].mean - members[1].mean) / 2) ** 2
    assert np.allclose(p.sigma_raw, np.sqrt(mix))
    assert np.allclose(p.sigma, p.sigma_raw * ens.sigma_scale)
    pv = predict_ensemble(ens, data["val"])
    cal = calibration(pv.mean, pv.sigma, src.labels(data["val"].ids, "true"), LABEL_NAMES)
    assert np.allclose(cal["z_rms"], 1, atol=1e-6)
    with pytest.raises(ValueError, match="members"):
        train_ensemble(src, split, "apogee", "true", cfg, members=0)


def test_aspcap_labels_with_missing_values_train(cache):
    src = _fake_source()
    split = starnet_split(src, seed=0)
    run = train_starnet(src, split, "nirspec", "aspcap", TrainConfig(epochs=1, batch_size=16),
                        progress=False)
    assert np.isfinite(run.history["train_loss"]).all()


def test_prediction_refuses_another_grid(cache):
    src = _fake_source()
    split = starnet_split(src, seed=0)
    run = train_starnet(src, split, "apogee", "true", TrainConfig(epochs=1, batch_size=16),
                        progress=False)
    nir = starnet_data(src, split, "nirspec")
    with pytest.raises(ValueError, match="apogee"):
        predict(run, nir["test"])
    with pytest.raises(ValueError, match="another grid"):
        predict(run, np.ones((3, 61), np.float32))
    with pytest.raises(ValueError, match="labels must be"):
        train_starnet(src, split, "apogee", "ASPCAP", progress=False)


def test_real_like_source_has_no_truth_or_nirspec(cache):
    src = _fake_source()
    src.kind, src.truth = "real", None
    del src.spectra["nirspec"]
    with pytest.raises(ValueError, match="no true labels"):
        src.labels(src.paired_ids[:3], "true")
    with pytest.raises(ValueError, match="no nirspec"):
        src.modality("nirspec")


# ---------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------

def test_ridge_matches_scikit_learn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40)).astype(np.float32)
    y = x[:, :3] @ rng.normal(size=(3, 2)) + rng.normal(0, 0.1, (300, 2))
    r = fit_ridge(x[:200], y[:200], x[200:250], y[200:250], alphas=[1e-3, 1e-1, 10.0])
    for j in range(2):
        ys = (y[:200, j] - y[:200, j].mean()) / y[:200, j].std()
        sk = Ridge(alpha=float(r.alpha[j])).fit(x[:200].astype(np.float64), ys)
        mine = r.predict(x[250:])[:, j]
        theirs = sk.predict(x[250:].astype(np.float64)) * y[:200, j].std() + y[:200, j].mean()
        assert np.allclose(mine, theirs, atol=1e-4)


def test_label_metrics_and_calibration_on_known_errors():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(20000, 20))
    pred = truth + 0.1 + rng.normal(0, 0.5, truth.shape)
    m = label_metrics(pred, truth, LABEL_NAMES)
    assert np.allclose(m["bias"], 0.1, atol=0.02) and np.allclose(m["rmse"], np.hypot(0.1, 0.5),
                                                                   atol=0.02)
    assert np.allclose(m["r2"], 1 - m["rmse"] ** 2, atol=0.03)
    c = calibration(pred - 0.1, np.full(truth.shape, 0.5), truth, LABEL_NAMES)
    assert np.allclose(c["z_std"], 1, atol=0.03) and np.allclose(c["within_1sigma"], 0.683,
                                                                 atol=0.02)


def test_ridge_primal_and_dual_agree():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 60)).astype(np.float32)
    y = x[:, :4] @ rng.normal(size=(4, 3)) + rng.normal(0, 0.1, (120, 3))
    y[5, 1] = np.nan                                   # a missing label drops the row
    primal = fit_ridge(x[:100], y[:100], x[100:], y[100:], alphas=[1e-2, 1.0])
    dual = fit_ridge(x[:40], y[:40], x[100:], y[100:], alphas=[1e-2, 1.0])   # 39 < 60
    assert primal.columns.size == dual.columns.size == 60
    from sklearn.linear_model import Ridge
    keep = np.delete(np.arange(40), 5)
    ys = (y[keep, 0] - y[keep, 0].mean()) / y[keep, 0].std()
    sk = Ridge(alpha=float(dual.alpha[0])).fit(x[keep].astype(np.float64), ys)
    assert np.allclose(dual.predict(x[100:])[:, 0],
                       sk.predict(x[100:].astype(np.float64)) * y[keep, 0].std() + y[keep, 0].mean(),
                       atol=1e-4)


def test_chapter_setup_names_bad_parameters(cache):
    from helpers.starnet import chapter_setup

    good = dict(n_field=5000, survey_seed=42, apogee_cache=None, max_real_stars=100,
                split_seed=0, epochs=1, batch_size=64, lr=1e-3, step_size=5, gamma=0.1, seed=0,
                n_boot=10)
    for name, bad in (("epochs", 0), ("n_boot", 1), ("split_seed", -1), ("lr", 0.0),
                      ("batch_size", 0), ("threads", 0)):
        with pytest.raises(ValueError, match=name):
            chapter_setup(**{**good, name: bad})
    with pytest.raises(FileNotFoundError, match="apogee_cache"):
        chapter_setup(**{**good, "apogee_cache": "/no/such/cache"})


def _real_cache(tmp_path, n=60):
    """A tiny spectra cache shaped like one built from aspcapStar files."""
    from helpers.apogee import SpectraCacheWriter

    src = _fake_source(n=n)
    cat = src.catalogue.copy()
    cat.loc[3, "APOGEE_ID"] = cat.loc[2, "APOGEE_ID"]      # one star observed twice
    cat.loc[3, "SNR"] = cat.loc[2, "SNR"] + 50              # ... the second visit is better
    cat["ASPCAPFLAG"] = np.zeros(n, np.int64)
    cat.loc[5, "ASPCAPFLAG"] = 1 << 23                      # STAR_BAD
    rng = np.random.default_rng(0)
    flux = (0.8 + 0.05 * rng.standard_normal((n, 8575))).astype(np.float32)
    out = tmp_path / "real_cache"
    with SpectraCacheWriter(out, cat, release="dr17") as w:
        w.write(slice(0, n), flux, np.full((n, 8575), 0.01, np.float32))
    return out, cat


def test_real_cache_source(cache, tmp_path):
    from helpers.starnet import starnet_source

    path, cat = _real_cache(tmp_path)
    src = starnet_source(apogee_cache=path, max_real_stars=40)
    assert src.kind == "real" and src.modalities == ("apogee",) and src.truth is None
    assert len(src.paired_ids) == 40 and np.unique(src.paired_ids).size == 40
    assert cat.APOGEE_ID[5] not in src.paired_ids            # STAR_BAD left out
    full = starnet_source(apogee_cache=path, max_real_stars=1000)
    assert len(full.paired_ids) == 60 - 2                     # a duplicate and a bad star
    row = full.spectra["apogee"].rows_of([cat.APOGEE_ID[2]])[0]
    assert row == 3                                           # the better visit is used
    y = full.labels(full.paired_ids, "aspcap")
    assert y.shape == (58, 20)
    split = starnet_split(full, seed=1)
    data = starnet_data(full, split, "apogee")
    assert data["train"].n_pixels == 8575
    assert split.path.parent.name == full.key and full.key.startswith("cache-")


def test_progress_is_quiet_under_ci(monkeypatch):
    from helpers.starnet import progress_enabled

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert progress_enabled(True) and not progress_enabled(False)
    monkeypatch.setenv("CI", "1")
    assert not progress_enabled(True)
    monkeypatch.delenv("CI")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not progress_enabled(True)
