"""StarCLIP end to end on a small in-memory source: pairs, training, caching, MockStarCLIP."""

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.starclip import (ClipConfig, MockSettings, embed_catalogue_rows, embed_parts,
                              mock_chain, pretrained_towers, retrieval, starclip_pairs,
                              train_mock_starclip, train_starclip)
from helpers.starnet import (STARNET_ELEMENTS, ModalitySpectra, StarnetSource, TrainConfig,
                             pretrained_encoders, starnet_split, true_labels)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STARS_BOOK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_source(n=240, seed=0):
    """Labels drive both spectra linearly; the NIRSpec grid covers the Paschen lines."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"2M{i:08d}+0000000" for i in range(n)])
    truth = {"TEFF": rng.uniform(4000, 5000, n), "LOGG": rng.uniform(1.5, 3.0, n),
             "FE_H": rng.normal(-0.2, 0.3, n)}
    for el in STARNET_ELEMENTS:
        if el != "Fe":
            truth[f"X_FE_{el}"] = rng.normal(0, 0.1, n)
    truth = pd.DataFrame(truth)
    y = true_labels(truth)
    z = (y - y.mean(0)) / y.std(0)
    snr = rng.uniform(60, 200, n)
    spectra = {}
    grids = {"apogee": np.linspace(15100, 17000, 120), "nirspec": np.geomspace(9700, 17950, 400)}
    for k, (name, wave) in enumerate(grids.items()):
        a = np.random.default_rng(seed + 10 + k).normal(0, 0.03, (y.shape[1], wave.size))
        err = (np.full((n, wave.size), 1.0) / snr[:, None]).astype(np.float32)
        flux = (0.8 + z @ a + rng.normal(size=(n, wave.size)) * err).astype(np.float32)
        if name == "nirspec":                 # a detector gap per star
            lo = rng.integers(150, 250, n)
            for i in range(n):
                flux[i, lo[i]:lo[i] + 20] = 0
                err[i, lo[i]:lo[i] + 20] = 1e10
        spectra[name] = ModalitySpectra(name, flux, err, wave, ids, np.arange(n), snr)
    cat = pd.DataFrame({"APOGEE_ID": ids, "TEFF": truth.TEFF, "LOGG": truth.LOGG,
                        "FE_H": truth.FE_H, "SNR": snr})
    return StarnetSource(key=f"fake-clip-{seed}-{n}", kind="synthetic", catalogue=cat,
                         truth=truth, spectra=spectra, paired_ids=np.sort(ids))


@pytest.fixture
def setup(cache):
    src = fake_source()
    split = starnet_split(src, seed=0)
    enc = pretrained_encoders(src, split, config=TrainConfig(epochs=4, batch_size=16, step_size=3),
                              progress=False)
    return src, split, enc, starclip_pairs(src, split)


def test_pairs_line_up_and_the_template_is_a_training_star(setup):
    src, split, enc, pairs = setup
    for part in ("train", "val", "test"):
        assert np.array_equal(pairs.sets["apogee"][part].ids, split.part(part))
        assert np.array_equal(pairs.sets["nirspec"][part].ids, split.part(part))
        assert pairs.nirspec_error[part].shape == pairs.sets["nirspec"][part].flux.shape
    assert pairs.template["id"] in set(split.train)
    chain = mock_chain(pairs, MockSettings())
    assert chain.transforms[0].skipped == (9548.6,)
    v = chain(pairs.view("test"), np.random.default_rng(0))
    assert v.flux.shape == pairs.sets["nirspec"]["test"].flux.shape and np.all(np.isfinite(v.flux))


def test_starclip_trains_on_the_training_stars_only_and_is_cached(setup, monkeypatch):
    src, split, enc, pairs = setup
    cfg = ClipConfig(epochs=3, batch_size=32, lr=1e-3, seed=1)
    run = train_starclip(pairs, enc, cfg, progress=False)
    assert run.meta["n_pairs"] == split.sizes["train"] and run.meta["data"]["stars"] == "train"
    assert list(run.history.columns[:2]) == ["epoch", "loss"] and "val_R@1_ba" in run.history
    again = train_starclip(pairs, enc, cfg, progress=False)           # from the cache
    assert again.path == run.path
    for (k, v), w in zip(run.towers["apogee"].state_dict().items(),
                         again.towers["apogee"].state_dict().values()):
        assert torch.equal(v, w), k
    other = train_starclip(pairs, enc, ClipConfig(epochs=3, batch_size=32, lr=1e-3, seed=2),
                           progress=False)
    assert other.path != run.path
    e = embed_parts(run.towers, pairs, "test")
    assert e["apogee"].shape == (split.sizes["test"], 20)
    assert np.allclose(np.linalg.norm(e["nirspec"], axis=1), 1, atol=1e-5)
    before = embed_parts(pretrained_towers(enc), pairs, "test")
    r_before = retrieval(before["nirspec"], before["apogee"]).metrics["R@1"]
    assert r_before > 3 / split.sizes["test"]      # the encoders already share their outputs
    with pytest.raises(ValueError, match="larger than the"):
        train_starclip(pairs, enc, ClipConfig(batch_size=500), progress=False)


def test_mock_starclip_freezes_the_mock_encoder(setup):
    src, split, enc, pairs = setup
    cfg = ClipConfig(epochs=2, batch_size=16, seed=0)
    run, chosen = train_mock_starclip(pairs, enc["nirspec"], cfg, n_stars=60, n_bins=5,
                                      progress=False)
    assert chosen.size == 60 and np.unique(chosen).size == 60
    frozen = run.towers["mock"].encoder.state_dict()
    for k, v in enc["nirspec"].model.state_dict().items():
        assert torch.equal(frozen[k], v), k                      # unchanged
    ext = run.towers["extended"].encoder
    assert torch.equal(ext.conv1.weight, enc["nirspec"].model.conv1.weight)
    assert not torch.equal(ext.fc1.weight, enc["nirspec"].model.fc1.weight)
    with pytest.raises(ValueError, match="MockStarCLIP stars"):
        train_mock_starclip(pairs, enc["nirspec"], cfg, n_stars=10_000, progress=False)
    with pytest.raises(ValueError, match="embedding must be 'output'"):
        train_mock_starclip(pairs, enc["nirspec"], ClipConfig(embedding="projection", batch_size=16),
                            n_stars=60, n_bins=5, progress=False)


def test_catalogue_rows_are_embedded_as_the_split_sets(setup):
    src, split, enc, pairs = setup
    spec = src.modality("apogee")
    towers = pretrained_towers(enc)
    rows = spec.rows_of(split.test)[::-1]                      # any order
    z = embed_catalogue_rows(spec.flux, spec.error, rows, {"a": towers["apogee"]},
                             enc["apogee"].fill, max_error=0.05,
                             key_parts={"test": 1})["a"]
    direct = towers["apogee"].embed(pairs.sets["apogee"]["test"].flux)[::-1]
    assert np.allclose(z, direct, atol=1e-5)
    cached = embed_catalogue_rows(spec.flux, spec.error, rows, {"a": towers["apogee"]},
                                  enc["apogee"].fill, max_error=0.05, key_parts={"test": 1})["a"]
    assert np.array_equal(cached, z)
