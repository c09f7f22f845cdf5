"""FID through torchmetrics with pluggable features == an independent numpy/scipy Frechet computation.

Features come from a tiny random conv net (16-d); the pytorch-fid Inception is checked for its weight-file layout,
its FID-specific blocks, its loader errors and one forward pass (random weights: no real weights exist here)."""
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from sgalign.evaluation.fid import (FIDFeatures, ImageEncoderFeatures, InceptionV3Features, compute_fid,
                                    extract_features, fid_bootstrap, fid_from_features, inception_fid_features)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # conv nets on a CPU shared by several jobs run far faster on one thread than on contended two; restored after
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_net(dim: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, dim, 3, stride=2), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def frechet_numpy(f1: np.ndarray, f2: np.ndarray) -> float:
    """Reference: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), unbiased covariances, scipy sqrtm."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (60, 3, 32, 32), generator=g, dtype=torch.uint8)
    fake = (torch.rand(60, 3, 32, 32, generator=g) ** 2 * 255).to(torch.uint8)  # darker distribution
    return real, fake


def test_standard_fid_equals_numpy_scipy(images):
    real, fake = images
    net = tiny_net()
    feats = FIDFeatures(ImageEncoderFeatures(net, name="tiny"), 16, "standard")
    res = compute_fid(real, fake, feats, batch_size=25)
    with torch.no_grad():
        f_real = net(real.float() / 255).double().numpy()
        f_fake = net(fake.float() / 255).double().numpy()
    ref = frechet_numpy(f_real, f_fake)
    assert ref > 1e-3
    assert res.fid == pytest.approx(ref, rel=1e-4)
    assert (res.n_real, res.n_fake) == (60, 60)
    assert res.features["preprocess"] == "standard" and res.features["encoder"] == "tiny"
    # same sets -> 0; the feature path agrees with the image path
    assert compute_fid(real, real, feats).fid == pytest.approx(0.0, abs=1e-3)
    fr, ff = extract_features(real, feats), extract_features(fake, feats)
    assert fid_from_features(fr, ff) == pytest.approx(ref, rel=1e-6)


def test_paper_preprocessing_equals_laion_sg_recipe(images):
    real, fake = images
    net = tiny_net()
    paper = FIDFeatures(ImageEncoderFeatures(net), 16, "paper")

    def laion_sg(x):  # uint8/255 -> Resize((256, 256), antialias=False) -> x*2-1, then the backbone
        x = F.interpolate(x.float() / 255, size=(256, 256), mode="bilinear", align_corners=False, antialias=False)
        return net(x * 2 - 1).double().numpy()

    with torch.no_grad():
        ref = frechet_numpy(laion_sg(real), laion_sg(fake))
    res = compute_fid(real, fake, paper)
    assert res.fid == pytest.approx(ref, rel=1e-4)
    assert res.features["preprocess"] == "paper" and res.features["paper_size"] == 256
    standard = compute_fid(real, fake, FIDFeatures(ImageEncoderFeatures(net), 16, "standard"))
    assert abs(standard.fid - res.fid) > 1e-3 * max(1.0, abs(res.fid))
    # float input in paper mode is truncated to uint8 first, as generate_npz.py's astype(uint8)
    as_float = (real.float() + 0.9) / 255
    with torch.no_grad():
        assert torch.allclose(paper(as_float), paper(real))


def test_bootstrap_interval_is_seeded(images):
    real, fake = images
    feats = FIDFeatures(ImageEncoderFeatures(tiny_net()), 16)
    fr, ff = extract_features(real, feats), extract_features(fake, feats)
    r1 = fid_bootstrap(fr, ff, feats.describe(), n_resamples=30, seed=4)
    r2 = fid_bootstrap(fr, ff, feats.describe(), n_resamples=30, seed=4)
    assert r1 == r2 and r1.ci.n_resamples == 30 and r1.ci.low < r1.ci.high
    assert r1.fid == pytest.approx(fid_from_features(fr, ff))
    assert r1.to_dict()["ci"]["level"] == 0.95


def test_encoder_wrapper_output_selection_and_normalisation():
    class DictEncoder(nn.Module):
        def forward(self, x):
            return {"image_embeds": x.mean(dim=(2, 3)), "other": x}

    enc = ImageEncoderFeatures(DictEncoder(), image_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                               output="image_embeds")
    x = torch.full((2, 3, 16, 16), 0.75)
    assert torch.allclose(enc(x), torch.ones(2, 3))  # (0.75 - 0.5) / 0.25


def test_bad_images():
    feats = FIDFeatures(ImageEncoderFeatures(tiny_net()), 16)
    with pytest.raises(ValueError, match="NCHW RGB"):
        feats(torch.zeros(2, 32, 32, 3))
    with pytest.raises(ValueError, match="preprocess must be one of"):
        FIDFeatures(tiny_net(), 16, "clean")
    with pytest.raises(ValueError, match="at least 2 real"):
        compute_fid(torch.zeros(1, 3, 8, 8), torch.zeros(3, 3, 8, 8), feats)
    with pytest.raises(ValueError, match="returned 16 features, expected 32"):
        FIDFeatures(tiny_net(), 32)(torch.zeros(1, 3, 8, 8))


# ---- pytorch-fid Inception -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    return InceptionV3Features().eval()


def test_inception_names_match_pytorch_fid_file_layout(inception):
    # pytorch-fid loads its file strictly into torchvision's Inception3(num_classes=1008, aux_logits=False)
    from torchvision.models.inception import Inception3

    tv_keys = set(Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict())
    assert set(inception.state_dict()) == tv_keys - {"fc.weight", "fc.bias"}
    # torchvision's Inception3 with 1008 classes has 23,850,960 parameters; the fc layer is not part of ours
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960 - (2048 * 1008 + 1008)


def test_inception_fid_blocks(inception):
    from torchvision.models.inception import InceptionA

    # Mixed_5b: TF-style average pooling ignores the zero padding -> same as torchvision inside, different on borders
    x = torch.rand(1, 192, 9, 9)
    tv = InceptionA(192, pool_features=32).eval()
    tv.load_state_dict(inception.Mixed_5b.state_dict())
    with torch.no_grad():
        ours, theirs = inception.Mixed_5b(x), tv(x)
    assert torch.allclose(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], atol=1e-5)
    assert not torch.allclose(ours[..., 0, 0], theirs[..., 0, 0], atol=1e-4)
    # Mixed_7c: the pooling branch uses a 3x3 max pool
    y = torch.rand(1, 2048, 4, 4)
    block = inception.Mixed_7c
    with torch.no_grad():
        pooled = block.branch_pool(F.max_pool2d(y, 3, stride=1, padding=1))
        assert torch.allclose(block(y)[:, -192:], pooled, atol=1e-6)


def test_inception_loader_round_trip_and_forward(inception, tmp_path):
    state = {k: v for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # in the file, unused
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    feats = inception_fid_features(path, preprocess="paper")
    loaded = feats.backbone
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items() if not k.startswith("fc."))
    info = feats.describe()
    assert info["weights"] == path.name and len(info["weights_sha256"]) == 64 and info["preprocess"] == "paper"
    with torch.no_grad():
        out = feats(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert out.shape == (1, 2048) and torch.isfinite(out).all() and (out >= 0).all()  # pool3 after ReLU


def test_inception_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionV3Features.from_pretrained(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a pytorch-fid Inception state dict"):
        InceptionV3Features.from_pretrained(bad)


def test_fid_interval_contains_its_estimate_and_resamples_graphs():
    # small N, same distribution: the FID estimate is small and the bootstrap sits far above it, so a percentile
    # interval excluded the estimate; the reported interval never does
    from sgalign.evaluation.fid import fid_paired

    rng = np.random.default_rng(0)
    G, K, D = 20, 3, 6
    real = torch.from_numpy(rng.normal(size=(G, D)))
    for s in range(5):
        fake = torch.from_numpy(rng.normal(size=(G * K, D)))
        res = fid_bootstrap(real, fake, n_resamples=40, seed=s, fake_per_real=K)
        ci = res.ci
        assert 0.0 <= ci.low <= res.fid <= ci.high and ci.low < ci.high
        assert ci.n == G and ci.unit.startswith("graph") and "re-centred" in ci.method
    with pytest.raises(ValueError, match="not 4 per each of 20"):
        fid_bootstrap(real, fake, fake_per_real=4)
    # paired: a model against itself differs by exactly 0 and is never significant; a shifted model is
    same = fid_paired(real, fake, fake.clone(), fake_per_real=K, n_resamples=30, seed=0)
    assert same.difference.estimate == same.difference.low == same.difference.high == 0.0 and same.p_value == 1.0
    worse = fid_paired(real, fake + 0.8, fake, fake_per_real=K, n_resamples=30, seed=0)
    d = worse.difference
    assert d.low <= d.estimate <= d.high and d.low > 0 and worse.p_value == pytest.approx(1 / 31)
    assert worse.to_dict()["difference"]["unit"].startswith("graph")


def test_fid_plot_bars_are_asymmetric_and_never_show_an_interval_excluding_the_estimate(tmp_path):
    from sgalign.evaluation.report import _bar_plot, interval_error_bars

    rng = np.random.default_rng(1)
    real, fake = torch.from_numpy(rng.normal(size=(20, 6))), torch.from_numpy(rng.normal(size=(60, 6)) + 0.3)
    ci = fid_bootstrap(real, fake, n_resamples=40, seed=0, fake_per_real=3).ci.to_dict()
    old = {"estimate": 12.2, "low": 20.5, "high": 24.5}  # a percentile interval from before the fix
    err = interval_error_bars([ci, old])
    lower, upper = err[:, 0]
    assert lower >= 0 and upper >= 0 and abs(upper - lower) > 1e-3 * (upper + lower)
    assert (lower, upper) == pytest.approx((ci["estimate"] - ci["low"], ci["high"] - ci["estimate"]))
    assert np.isnan(err[:, 1]).all()  # no bar at all, not a clipped one
    assert _bar_plot(tmp_path / "fid.png", "FID", ["FID"], {"model": [ci], "old": [old]}, "FID").stat().st_size > 0
