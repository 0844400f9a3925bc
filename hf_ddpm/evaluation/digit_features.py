"""Distribution metrics for generated digits in the feature space of a small convolutional digit classifier.

The classifier (`DigitConvNet`) trains on the digits held out from diffusion training
(`hf_ddpm.data.mnist_training_and_held_out_digits`) and is measured on the training split; its penultimate layer is
the feature space. The reference set is the diffusion training split, as FID's is the training set. In it:

- FDD, the Fréchet digit distance: the Fréchet distance of FID (Heusel et al. 2017) between Gaussians fitted to
  these features instead of Inception's (so its values are not FIDs), with a bootstrap standard error over the
  generated set;
- precision and recall (Kynkäänniemi et al. 2019): the share of generated samples inside the real manifold, and
  of real samples inside the generated one, each manifold a union of k-nearest-neighbour balls.

`reference_class=c` compares the samples with the real digits of class c alone (per-class metrics of a
class-conditional model). The trained classifier and the reference features (with their labels) are cached in `digit_cache_dir()` (`HF_DDPM_CACHE`, else
`~/.cache/hf_ddpm`): a safetensors file of weights, one of reference features and a JSON of the config and the
held-out accuracy, in a folder named after the config.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image
from torch import nn

from hf_ddpm.evaluation.digits import image_resolution, images_to_features
from hf_ddpm.evaluation.fid import FeatureStatistics, frechet_distance

__all__ = [
    "DigitClassifierConfig",
    "DigitConvNet",
    "DigitFeatureMetricsOutput",
    "DigitFeatureSpace",
    "digit_cache_dir",
    "digit_feature_metrics",
    "frechet_digit_distance",
    "get_digit_feature_space",
    "precision_recall",
]

_FORMAT_VERSION = 2  # part of the cache key: bump when training changes what a config produces


@dataclass(frozen=True)
class DigitClassifierConfig:
    """What determines a trained classifier; its hash names the cache folder."""

    resolution: int = 16
    channels: tuple[int, int] = (16, 32)
    feature_dim: int = 64
    epochs: int = 20
    batch_size: int = 100
    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({**asdict(self), "version": _FORMAT_VERSION}, sort_keys=True)
        return f"{self.resolution}px-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


class DigitConvNet(nn.Module):
    """
    Two stride-2 3×3 convolutions with ReLU (R → R/2 → R/4), a linear layer with ReLU to `feature_dim` features,
    and a linear layer to the 10 class logits. Strided convolutions rather than pooling keep training to seconds.

    Args:
        resolution (`int`, defaults to 16): side of the square grayscale inputs in [−1, 1], a multiple of 4.
        channels (`tuple[int, int]`, defaults to `(16, 32)`): channels of the two convolutions.
        feature_dim (`int`, defaults to 64): size of the penultimate layer, the feature space.
    """

    def __init__(self, resolution: int = 16, channels: tuple[int, int] = (16, 32), feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, channels[0], 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels[1] * (resolution // 4) ** 2, feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, feature_dim) of images (N, 1, R, R)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class DigitFeatureSpace:
    """
    A trained `DigitConvNet` with the features of the reference digits.

    Args:
        net (`DigitConvNet`): the classifier, in eval mode.
        config (`DigitClassifierConfig`): how it was trained.
        held_out_accuracy (`float`): its accuracy on the diffusion training split, which it never saw.
        reference_features (`torch.Tensor`): (N, feature_dim) features of the diffusion training split.
        reference_labels (`torch.Tensor`): (N,) their digits, int64.
    """

    net: DigitConvNet
    config: DigitClassifierConfig
    held_out_accuracy: float
    reference_features: torch.Tensor
    reference_labels: torch.Tensor

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features (N, feature_dim), float32, of images in any layout `images_to_features` accepts."""
        return _features(self.net, _as_batch(images, self.config.resolution))


def _as_batch(images: Sequence[Image.Image] | np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    flat = torch.from_numpy(images_to_features(images, resolution))
    return flat.view(len(flat), 1, resolution, resolution)


@torch.no_grad()
def _features(net: DigitConvNet, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([net.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def digit_cache_dir() -> Path:
    """Where trained digit classifiers are kept: `$HF_DDPM_CACHE/digit_classifier`, else under ~/.cache/hf_ddpm."""
    root = os.environ.get("HF_DDPM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_ddpm")
    return Path(root) / "digit_classifier"


def _train(config: DigitClassifierConfig, x: torch.Tensor, labels: torch.Tensor) -> DigitConvNet:
    """AdamW on cross-entropy, seeded and on one thread: the same config gives the same weights."""
    with torch.random.fork_rng(devices=[]):  # seed the initialization without touching the caller's RNG
        torch.manual_seed(config.seed)
        net = DigitConvNet(config.resolution, config.channels, config.feature_dim)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # Ops this small gain nothing from threads and lose many times over on shared cores; one thread also makes the
    # reductions, hence the weights, reproducible bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(config.epochs):
            for batch in torch.randperm(len(x), generator=generator).split(config.batch_size):
                loss = nn.functional.cross_entropy(net(x[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def _train_and_save(config: DigitClassifierConfig, folder: Path) -> None:
    from safetensors.torch import save_file

    from hf_ddpm.data import mnist_training_and_held_out_digits

    diffusion_train, held_out = mnist_training_and_held_out_digits()
    net = _train(config, _as_batch(held_out["image"], config.resolution), torch.tensor(held_out["label"]))
    x_eval, labels = _as_batch(diffusion_train["image"], config.resolution), torch.tensor(diffusion_train["label"])
    with torch.no_grad():
        accuracy = float((net(x_eval).argmax(1) == labels).float().mean())
    folder.mkdir(parents=True, exist_ok=True)
    # Written under temporary names and renamed, config.json last: a folder with config.json is complete.
    files = {
        "model.safetensors": net.state_dict(),
        "reference_features.safetensors": {"features": _features(net, x_eval), "labels": labels.long()},
    }
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / f"{name}.tmp")
        os.replace(folder / f"{name}.tmp", folder / name)
    meta = {**asdict(config), "version": _FORMAT_VERSION, "held_out_accuracy": accuracy, "num_reference": len(x_eval)}
    (folder / "config.json.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(folder / "config.json.tmp", folder / "config.json")


@functools.lru_cache(maxsize=8)
def _load(config: DigitClassifierConfig, folder: Path) -> DigitFeatureSpace:
    from safetensors.torch import load_file

    if not (folder / "config.json").exists():
        _train_and_save(config, folder)
    net = DigitConvNet(config.resolution, config.channels, config.feature_dim)
    net.load_state_dict(load_file(folder / "model.safetensors"))
    meta = json.loads((folder / "config.json").read_text())
    reference = load_file(folder / "reference_features.safetensors")
    return DigitFeatureSpace(
        net.eval(), config, float(meta["held_out_accuracy"]), reference["features"], reference["labels"]
    )


def get_digit_feature_space(
    resolution: int = 16, *, config: DigitClassifierConfig | None = None, cache_dir: str | os.PathLike | None = None
) -> DigitFeatureSpace:
    """
    The digit classifier of `resolution`, loaded from the cache, or trained (seeded, seconds on a CPU) and cached.

    Args:
        resolution (`int`, defaults to 16):
            Side of the square images, as the diffusion model generates them; a multiple of 4, ≥ 8.
        config (`DigitClassifierConfig`, *optional*):
            Training settings; defaults to `DigitClassifierConfig(resolution=resolution)` (a given config's
            resolution wins).
        cache_dir (`str` or `os.PathLike`, *optional*):
            Defaults to `digit_cache_dir()`.

    Returns:
        [`DigitFeatureSpace`]
    """
    config = config or DigitClassifierConfig(resolution=resolution)
    if isinstance(config.resolution, bool) or not isinstance(config.resolution, int) or config.resolution < 8:
        raise ValueError(f"`resolution` must be an int ≥ 8 and a multiple of 4, got {config.resolution!r}.")
    if config.resolution % 4:
        raise ValueError(f"`resolution` must be a multiple of 4 (two 2× poolings), got {config.resolution}.")
    folder = (Path(cache_dir) if cache_dir is not None else digit_cache_dir()) / config.key()
    return _load(config, folder.resolve())


def frechet_digit_distance(
    features: torch.Tensor, reference_features: torch.Tensor, *, num_bootstrap: int = 100, seed: int = 0
) -> tuple[float, float]:
    """
    FDD: the Fréchet distance ‖μ − μ_r‖² + tr(Σ + Σ_r − 2 (Σ Σ_r)^{1/2}) between Gaussians fitted to `features` and
    `reference_features`, and its bootstrap standard error.

    The standard error is the standard deviation of FDD over `num_bootstrap` resamples (with replacement, from a
    generator seeded with `seed`) of `features`, the reference held fixed: the spread due to the finite generated set.
    Where the two distributions nearly agree, FDD is a degenerate statistic and the bootstrap overstates its error;
    the error is then an upper bound.

    Args:
        features (`torch.Tensor`): (N, d), N ≥ 2, e.g. of generated images.
        reference_features (`torch.Tensor`): (M, d), M ≥ 2, of real images.
        num_bootstrap (`int`, *optional*, defaults to 100): B, the number of resamples, ≥ 2; 0 skips the error (nan).
        seed (`int`, *optional*, defaults to 0): seed of the resampling.

    Returns:
        `tuple[float, float]`: FDD and its standard error.
    """
    if (
        isinstance(num_bootstrap, bool)
        or not isinstance(num_bootstrap, int)
        or num_bootstrap == 1
        or num_bootstrap < 0
    ):
        raise ValueError(f"`num_bootstrap` must be 0 (no standard error) or an int ≥ 2, got {num_bootstrap!r}.")
    features = features.double().cpu().numpy()
    reference = FeatureStatistics.from_features(reference_features.double().cpu().numpy())

    def fdd(x: np.ndarray) -> float:
        stats = FeatureStatistics.from_features(x)
        return frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)

    if num_bootstrap == 0:
        return fdd(features), float("nan")
    generator = torch.Generator().manual_seed(seed)
    resamples = torch.randint(len(features), (num_bootstrap, len(features)), generator=generator).numpy()
    return fdd(features), float(np.std([fdd(features[index]) for index in resamples], ddof=1))


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each point lies in ∪_j B(centres_j, radii_j)."""
    return (torch.cdist(points, centres) <= radii).any(dim=1)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (the (k + 1)-th smallest distance counts itself)."""
    return torch.cdist(x, x).kthvalue(k + 1, dim=1).values


def precision_recall(real_features: torch.Tensor, generated_features: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """
    Improved precision and recall (Kynkäänniemi et al. 2019, §2).

    A set's manifold is the union of balls centred at its feature vectors, each with radius the distance to that
    vector's k-th nearest neighbour in the set (itself excluded). Precision is the share of generated samples inside
    the real manifold (fidelity); recall the share of real samples inside the generated manifold (coverage). The radii
    grow as a set shrinks, so compare the two sets at equal sizes.

    Args:
        real_features (`torch.Tensor`): (M, d), M > k.
        generated_features (`torch.Tensor`): (N, d), N > k.
        k (`int`, *optional*, defaults to 3): the neighbour defining the radii (the paper's k = 3).

    Returns:
        `tuple[float, float]`: precision and recall, in [0, 1].
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an int ≥ 1, got {k!r}.")
    if min(len(real_features), len(generated_features)) <= k:
        raise ValueError(
            f"both sets need more than k = {k} vectors, got {len(real_features)} real and "
            f"{len(generated_features)} generated."
        )
    real, generated = real_features.double(), generated_features.double()
    precision = _inside_any_ball(generated, real, _knn_radii(real, k)).double().mean()
    recall = _inside_any_ball(real, generated, _knn_radii(generated, k)).double().mean()
    return float(precision), float(recall)


@dataclass
class DigitFeatureMetricsOutput(BaseOutput):
    """
    Distribution metrics of generated digits in a `DigitFeatureSpace`.

    Args:
        fdd (`float`): Fréchet digit distance to the reference features (lower is better; not an FID).
        fdd_std_error (`float`): its bootstrap standard error (`frechet_digit_distance`).
        precision (`float`): share of generated samples inside the real manifold (higher is better).
        recall (`float`): share of real samples inside the generated manifold (higher is better).
        n (`int`): the number of generated samples.
    """

    fdd: float
    fdd_std_error: float
    precision: float
    recall: float
    n: int


def digit_feature_metrics(
    images: Sequence[Image.Image] | np.ndarray | torch.Tensor,
    *,
    reference_features: torch.Tensor | None = None,
    feature_space: DigitFeatureSpace | None = None,
    reference_class: int | None = None,
    num_bootstrap: int = 100,
    k: int = 3,
    seed: int = 0,
) -> DigitFeatureMetricsOutput:
    """
    FDD (with its bootstrap standard error), precision and recall of generated digits.

    FDD compares all N samples with all reference features; like FID it is biased upwards at small N, so compare
    values at the same N. Precision and recall compare min(N, M) of each set (a seeded subset of the larger one).

    Args:
        images (`Sequence[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The samples, in any layout [`~hf_ddpm.evaluation.digits.images_to_features`] accepts (tensors in [−1, 1],
            arrays in [0, 1]); N ≥ 2 and N > k.
        reference_features (`torch.Tensor`, *optional*):
            (M, d) real features; defaults to those of the diffusion training split.
        feature_space ([`DigitFeatureSpace`], *optional*):
            Defaults to `get_digit_feature_space(R)`, R the images' side (16 for PIL images).
        reference_class (`int`, *optional*):
            A digit 0-9: compare with the real digits of that class only (about 400), e.g. the samples a
            class-conditional model drew for it. Not with `reference_features`.
        num_bootstrap (`int`, *optional*, defaults to 100):
            B, resamples for FDD's standard error; 0 skips it (nan).
        k (`int`, *optional*, defaults to 3):
            Neighbour of the manifold radii.
        seed (`int`, *optional*, defaults to 0):
            Seed of the bootstrap and of the subset.

    Returns:
        [`DigitFeatureMetricsOutput`]
    """
    if reference_class is not None and (
        isinstance(reference_class, bool) or not isinstance(reference_class, int) or not 0 <= reference_class <= 9
    ):
        raise ValueError(f"`reference_class` must be a digit 0-9 or None, got {reference_class!r}.")
    if reference_class is not None and reference_features is not None:
        raise ValueError("give `reference_features` or `reference_class`, not both.")
    feature_space = feature_space or get_digit_feature_space(image_resolution(images))
    generated = feature_space.features(images)
    reference = feature_space.reference_features if reference_features is None else reference_features
    if reference_class is not None:
        reference = reference[feature_space.reference_labels == reference_class]
    if len(generated) < 2:
        raise ValueError(f"`images` must hold at least 2 images, got {len(generated)}.")
    fdd, std_error = frechet_digit_distance(generated, reference, num_bootstrap=num_bootstrap, seed=seed)
    size = min(len(generated), len(reference))
    generator = torch.Generator().manual_seed(seed)
    subset = [x[torch.randperm(len(x), generator=generator)[:size]] for x in (reference, generated)]
    precision, recall = precision_recall(*subset, k=k)
    return DigitFeatureMetricsOutput(fdd, std_error, precision, recall, len(generated))
