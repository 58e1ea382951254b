"""StarCLIP's towers, loss and training loop, on tiny randomly initialised StarNets."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.starclip.mock import uniform_feh_sample
from helpers.starclip.model import ClipTower, LogitScale, clip_loss
from helpers.starclip.retrieval import retrieval
from helpers.starclip.train import ClipConfig, ModalityBatches, fit_clip
from helpers.starclip.transforms import Denormalise, MockJWST, NoiseToSNR
from helpers.starnet import StarNet


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(n_pixels, seed):
    torch.manual_seed(seed)
    return StarNet(n_pixels, n_labels=6)


def test_clip_loss_is_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    s = 15.5 * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    manual = 0.5 * (-torch.log_softmax(s, 1).diag().mean() - torch.log_softmax(s.T, 1).diag().mean())
    assert torch.allclose(clip_loss(a, b, 15.5), manual)
    assert torch.allclose(clip_loss(a, b, 15.5), clip_loss(b, a, 15.5))
    eye = torch.eye(8, 8)
    assert clip_loss(eye, eye, 100.0) < 1e-3 < clip_loss(eye, eye.roll(1, 0), 100.0)
    with pytest.raises(ValueError, match="equal"):
        clip_loss(a, b[:, :4], 15.5)


def test_logit_scale_fixed_or_learned():
    fixed = LogitScale(15.5)
    assert float(fixed()) == pytest.approx(15.5) and not fixed.log_scale.requires_grad
    assert LogitScale(15.5, learnable=True).log_scale.requires_grad
    with pytest.raises(ValueError, match="logit_scale"):
        LogitScale(0.0)


def test_towers_freeze_what_they_should():
    enc = tiny(64, 0)
    t = ClipTower(enc, "output", train_from="fc1")
    trained = {n for n, p in t.named_parameters() if p.requires_grad}
    assert trained == {f"encoder.{m}.{w}" for m in ("fc1", "fc2", "fc3") for w in ("weight", "bias")}
    assert t.prefix_stages == ("conv",) and t.dim == 6
    head = ClipTower(enc, "projection", proj_dim=12, train_from="out")
    assert {n.split(".")[0] for n, p in head.named_parameters() if p.requires_grad} == {"head"}
    assert head.dim == 12 and head.prefix_stages == ("conv", "fc1", "fc2")
    frozen = ClipTower(enc, train_from=None)
    assert not frozen.trainable_parameters()
    x = torch.rand(5, 64)
    assert torch.allclose(frozen(x), F.normalize(enc(x), dim=1), atol=1e-6)   # the encoder's own outputs
    assert torch.allclose(t.suffix(t.prefix(x)), enc(x), atol=1e-6)
    enc_before = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        t.encoder.fc1.weight.add_(1.0)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in enc_before.items())   # a copy


def paired_data(n=192, seed=0):
    """Two 'modalities' of the same stars: a hidden label vector drawn into two grids."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, 4))
    basis_a = rng.normal(size=(4, 80)) * 0.2
    basis_b = rng.normal(size=(4, 48)) * 0.2
    a = (1 + y @ basis_a + 0.002 * rng.normal(size=(n, 80))).astype(np.float32)
    b = (1 + y @ basis_b + 0.002 * rng.normal(size=(n, 48))).astype(np.float32)
    return a, b


def test_training_aligns_two_random_towers_and_reproduces_with_its_seed():
    a, b = paired_data()
    cfg = ClipConfig(epochs=30, batch_size=32, lr=3e-3, embedding="projection", proj_dim=8,
                     train_from="out", augment=False, seed=0)

    def run():   # random encoders, frozen; only the projection heads learn
        ta = ClipTower(tiny(80, 1), "projection", 8, "out", seed=0)
        tb = ClipTower(tiny(48, 2), "projection", 8, "out", seed=1)
        before = retrieval(tb.embed(b), ta.embed(a)).metrics["R@1"]
        hist = fit_clip(ta, tb, ModalityBatches(a), ModalityBatches(b), cfg, progress=False,
                        ids=np.arange(len(a)).astype(str))
        return before, retrieval(tb.embed(b), ta.embed(a)).metrics["R@1"], hist, ta

    before, after, hist, ta = run()
    assert hist.loss.iloc[-1] < 0.6 * hist.loss.iloc[0]
    assert before < 0.05 and after > 0.5, (before, after)
    _, after2, hist2, ta2 = run()
    assert after2 == after and np.array_equal(hist.loss, hist2.loss)
    assert torch.equal(ta.head[0].weight, ta2.head[0].weight)


def test_augmented_views_are_fresh_each_epoch():
    a, b = paired_data(n=64)
    wave = np.geomspace(10000, 17000, 48)
    chain = MockJWST([Denormalise(wave, 0.05), NoiseToSNR((20.0, 20.0))], np.ones(48))
    data = ModalityBatches(b, np.ones_like(b, bool), np.full_like(b, 0.001), np.full(64, 1000.0),
                           chain)
    idx = np.arange(10)
    v1 = data.inputs(idx, np.random.default_rng([0, 13, 0]))
    v2 = data.inputs(idx, np.random.default_rng([0, 13, 1]))
    assert not np.allclose(v1, v2) and np.allclose(v1, data.inputs(idx, np.random.default_rng([0, 13, 0])))
    ta = ClipTower(tiny(80, 1), "output", train_from="fc2")
    tb = ClipTower(tiny(48, 2), "output", train_from="fc2")
    hist = fit_clip(ta, tb, ModalityBatches(a), data, ClipConfig(epochs=2, batch_size=16),
                    progress=False)
    assert len(hist) == 2 and np.all(np.isfinite(hist.loss))


def test_bad_training_input_is_refused():
    a, b = paired_data(n=40)
    ta, tb = ClipTower(tiny(80, 1)), ClipTower(tiny(48, 2))
    with pytest.raises(ValueError, match=r"batch_size \(64\) is larger than the 40 training pairs"):
        fit_clip(ta, tb, ModalityBatches(a), ModalityBatches(b), ClipConfig(batch_size=64))
    with pytest.raises(ValueError, match="each star once"):
        fit_clip(ta, tb, ModalityBatches(a), ModalityBatches(b), ClipConfig(batch_size=8),
                 ids=["s1"] * 40)
    with pytest.raises(ValueError, match="list 40 and 39 stars"):
        fit_clip(ta, tb, ModalityBatches(a), ModalityBatches(b[:39]), ClipConfig(batch_size=8))
    with pytest.raises(ValueError, match="both towers are frozen"):
        fit_clip(ClipTower(tiny(80, 1), train_from=None), ClipTower(tiny(48, 2), train_from=None),
                 ModalityBatches(a), ModalityBatches(b), ClipConfig(batch_size=8))
    for bad in (dict(batch_size=1), dict(epochs=0), dict(lr=-1.0), dict(logit_scale=0.0),
                dict(train_from="fc9"), dict(embedding="pixels"), dict(schedule="step")):
        with pytest.raises(ValueError, match="ClipConfig"):
            ClipConfig(**bad)


def test_uniform_feh_sample_spreads_stars_over_bins():
    rng = np.random.default_rng(0)
    feh = np.concatenate([rng.normal(-0.2, 0.2, 5000), [-2.0, -1.9]])   # a sparse low tail
    idx = uniform_feh_sample(feh, 500, 15, seed=1)
    assert idx.size == 500 == np.unique(idx).size
    edges = np.linspace(feh.min(), feh.max(), 16)
    counts = np.histogram(feh[idx], edges)[0]
    avail = np.histogram(feh, edges)[0]
    full = counts < avail                      # bins not exhausted get equal shares (+-1)
    assert counts[full].max() - counts[full].min() <= 1
    assert np.all(counts[~full] == avail[~full]) and counts[0] == 2
    assert np.array_equal(idx, uniform_feh_sample(feh, 500, 15, seed=1))
    with pytest.raises(ValueError, match="MockStarCLIP stars"):
        uniform_feh_sample(feh[:100], 500, 15)
    with pytest.raises(ValueError, match="n_bins"):
        uniform_feh_sample(feh, 10, 15)
