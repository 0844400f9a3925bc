"""FDD, precision and recall in the digit classifier's features: proven on real digits before they score models.

As Heusel et al. did for FID: two disjoint real sets are close, and the distance rises with every disturbance of
one of them; dropping modes costs recall, not precision. The tolerances below sit between measured values (seed 0,
the default classifier); the behaviour, not the figures, is what the tests pin.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_ddpm.data import make_transform, mnist_training_and_held_out_digits
from hf_ddpm.evaluation.digit_features import (
    DigitClassifierConfig,
    DigitFeatureSpace,
    digit_cache_dir,
    digit_feature_metrics,
    frechet_digit_distance,
    get_digit_feature_space,
    precision_recall,
)


@pytest.fixture(scope="module")
def real_digits():
    """1000 + 1000 + 2000 digits of the diffusion training split (never seen by the classifier), as tensors."""
    train, _ = mnist_training_and_held_out_digits()
    transform = make_transform(16, in_channels=1, center_crop=True)
    return torch.stack([transform(image) for image in train["image"]]), torch.tensor(train["label"])


@pytest.fixture(scope="module")
def reference(real_digits, digit_feature_space):
    return digit_feature_space.features(real_digits[0][:1000])


def _fdd(space: DigitFeatureSpace, images: torch.Tensor, reference: torch.Tensor) -> float:
    return frechet_digit_distance(space.features(images), reference, num_bootstrap=0)[0]


def _noise(x: torch.Tensor, std: float) -> torch.Tensor:
    return (x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)


def _blur(x: torch.Tensor, std: float) -> torch.Tensor:
    """Separable Gaussian blur of width `std` pixels, the border padded with the black background."""
    radius = math.ceil(2 * std)
    kernel = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * std**2))
    kernel = kernel / kernel.sum()
    x = F.pad(x, (radius,) * 4, value=-1.0)
    return F.conv2d(F.conv2d(x, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))


def _black_squares(x: torch.Tensor, count: int, size: int = 4) -> torch.Tensor:
    """`count` black size×size squares at random places on each image (Heusel et al.'s "black rectangles")."""
    x = x.clone()
    corners = torch.randint(0, x.shape[-1] - size + 1, (len(x), count, 2), generator=torch.Generator().manual_seed(2))
    for image, image_corners in zip(x, corners.tolist()):
        for row, col in image_corners:
            image[:, row : row + size, col : col + size] = -1.0
    return x


def test_classifier_is_accurate_on_real_digits_it_never_saw_and_cached_to_disk(digit_feature_space):
    assert digit_feature_space.held_out_accuracy > 0.88  # measured 0.92
    folder = digit_cache_dir() / digit_feature_space.config.key()
    meta = json.loads((folder / "config.json").read_text())
    assert meta["held_out_accuracy"] == digit_feature_space.held_out_accuracy and meta["resolution"] == 16
    assert (folder / "model.safetensors").exists() and meta["num_reference"] == 4000
    assert digit_feature_space.reference_features.shape == (4000, 64)


def test_cached_classifier_is_read_back_from_disk(digit_feature_space, real_digits, tmp_path):
    folder = digit_cache_dir() / digit_feature_space.config.key()
    shutil.copytree(folder, tmp_path / folder.name)
    written = {f.name: f.stat().st_mtime_ns for f in (tmp_path / folder.name).iterdir()}
    loaded = get_digit_feature_space(16, cache_dir=tmp_path)
    assert loaded is not digit_feature_space and loaded.held_out_accuracy == digit_feature_space.held_out_accuracy
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / folder.name).iterdir()} == written  # not retrained
    images = real_digits[0][:64]
    torch.testing.assert_close(loaded.features(images), digit_feature_space.features(images), rtol=0, atol=0)
    torch.testing.assert_close(loaded.reference_features, digit_feature_space.reference_features, rtol=0, atol=0)
    assert get_digit_feature_space(16) is digit_feature_space  # and kept in memory


@pytest.mark.slow  # two more trainings: their data preparation (5000 PIL digits each) takes seconds
def test_training_is_seeded(real_digits, tmp_path):
    config = DigitClassifierConfig(channels=(4, 8), feature_dim=16, epochs=2)  # tiny: only the seeding matters
    first = get_digit_feature_space(config=config, cache_dir=tmp_path / "a")
    second = get_digit_feature_space(config=config, cache_dir=tmp_path / "b")
    images = real_digits[0][:64]
    torch.testing.assert_close(first.features(images), second.features(images), rtol=0, atol=0)
    assert first.held_out_accuracy == second.held_out_accuracy
    assert sorted(f.name for f in (tmp_path / "a" / config.key()).iterdir()) == [
        "config.json", "model.safetensors", "reference_features.safetensors",
    ]  # fmt: skip


def test_real_halves_are_close_and_every_disturbance_raises_fdd_monotonically(
    digit_feature_space, real_digits, reference
):
    other_half = real_digits[0][1000:2000]
    real_vs_real = _fdd(digit_feature_space, other_half, reference)  # measured 4.5
    disturbances = {
        "noise": (_noise, (0.1, 0.2, 0.4, 0.8)),  # measured 7.3, 15, 45, 138
        "blur": (_blur, (0.5, 0.75, 1.0, 1.5)),  # measured 26, 105, 203, 437
        "black squares": (_black_squares, (1, 2, 4, 8)),  # measured 6.7, 18, 50, 152
    }
    for name, (disturb, levels) in disturbances.items():
        fdds = [_fdd(digit_feature_space, disturb(other_half, level), reference) for level in levels]
        assert real_vs_real < fdds[0], (name, real_vs_real, fdds)
        assert all(a < b for a, b in zip(fdds, fdds[1:])), (name, fdds)
        assert fdds[-1] > 20 * real_vs_real, (name, fdds)


def test_dropping_modes_costs_recall_not_precision(digit_feature_space, real_digits, reference):
    images, labels = real_digits[0][1000:2000], real_digits[1][1000:2000]
    full = digit_feature_metrics(
        images[:500], reference_features=reference, feature_space=digit_feature_space, num_bootstrap=0
    )
    dropped = digit_feature_metrics(
        images[labels < 5], reference_features=reference, feature_space=digit_feature_space, num_bootstrap=0
    )
    # Measured: full P 0.93, R 0.89; digits 0-4 only P 0.91, R 0.61 (FDD 7.5 → 109).
    assert full.precision > 0.85 and full.recall > 0.8
    assert dropped.precision > 0.85 and dropped.precision > full.precision - 0.05
    assert dropped.recall < full.recall - 0.2
    assert dropped.fdd > 5 * full.fdd and dropped.n == int((labels < 5).sum())


def test_bootstrap_error_is_seeded_and_covers_the_spread_over_disjoint_real_sets(
    digit_feature_space, real_digits, reference
):
    features = digit_feature_space.features(real_digits[0][1000:4000])
    fdd, error = frechet_digit_distance(features[:500], reference, num_bootstrap=20, seed=3)
    assert frechet_digit_distance(features[:500], reference, num_bootstrap=20, seed=3) == (fdd, error)
    assert frechet_digit_distance(features[:500], reference, num_bootstrap=20, seed=4)[1] != error
    spread = np.std(
        [frechet_digit_distance(features[i : i + 500], reference, num_bootstrap=0)[0] for i in range(0, 3000, 500)],
        ddof=1,
    )
    # Near FDD ≈ 0 FDD is a degenerate statistic and the bootstrap overstates its error (measured 2.7 vs 0.85).
    assert spread < error < 10 * spread


def test_fdd_is_zero_for_identical_sets_and_grows_with_a_mean_shift():
    features = torch.randn(300, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_digit_distance(features, features, num_bootstrap=0)[0] == pytest.approx(0, abs=1e-9)
    # Shifting every feature by δ adds ‖δ‖² exactly (the covariances are unchanged).
    shifted = features + torch.full((8,), 0.5, dtype=torch.float64)
    assert frechet_digit_distance(shifted, features, num_bootstrap=0)[0] == pytest.approx(8 * 0.25, rel=1e-9)


def test_precision_and_recall_follow_the_knn_ball_definition():
    # 1-D: real points 0..9; with k = 1 each interior ball has radius 1 (the nearest neighbour).
    real = torch.arange(10.0).view(-1, 1)
    generated = torch.tensor([[0.5], [4.0], [30.0], [31.0]])  # two inside the real manifold, two far away
    precision, recall = precision_recall(real, generated, k=1)
    assert precision == 0.5
    # Generated radii (k = 1): 0.5 → 3.5, 4.0 → 3.5, 30 → 1, 31 → 1; real points within 3.5 of 0.5 or 4.0: 0..7.
    assert recall == 0.8
    assert precision_recall(real, real, k=3) == (1.0, 1.0)


def test_pil_array_and_tensor_layouts_score_the_same(digit_feature_space, real_digits, reference):
    train, _ = mnist_training_and_held_out_digits()
    pil = list(train.select(range(2000, 2100))["image"])
    tensor = real_digits[0][2000:2100]
    array = ((tensor.permute(0, 2, 3, 1) + 1) / 2).numpy()
    kwargs = {"reference_features": reference, "feature_space": digit_feature_space, "num_bootstrap": 5}
    outputs = [digit_feature_metrics(images, **kwargs) for images in (pil, tensor, array)]
    for out in outputs[1:]:
        assert out.fdd == pytest.approx(outputs[0].fdd, rel=1e-4) and out.recall == outputs[0].recall
    assert outputs[0].n == 100 and outputs[0].fdd_std_error > 0


def test_bad_arguments_name_the_argument(digit_feature_space, reference):
    with pytest.raises(ValueError, match="resolution"):
        get_digit_feature_space(10)
    with pytest.raises(ValueError, match="num_bootstrap"):
        frechet_digit_distance(reference, reference, num_bootstrap=1)
    with pytest.raises(ValueError, match="`k`"):
        precision_recall(reference, reference, k=0)
    with pytest.raises(ValueError, match="at least 2"):
        digit_feature_metrics(torch.zeros(1, 1, 16, 16), feature_space=digit_feature_space)
