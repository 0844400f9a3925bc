"""A fast offline quality proxy for generated digits: a classifier trained on real held-out MNIST digits.

`digit_score` reports the share of samples whose top class probability is ≥ `confidence` and the class histogram
with its normalized entropy (1 = all ten classes equally often). It says "legible digits of every class", not
"these match the data distribution". `class_accuracy` scores a class-conditional model: the share of samples
classified, confidently, as the digit they were asked to be.

The classifier (scikit-learn's `MLPClassifier`) trains on the held-out split of
`hf_ddpm.data.mnist_training_and_held_out_digits`, which the diffusion model never sees, and is measured on the
other split. Real digits and samples go through the same `make_transform`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from hf_ddpm.data import make_transform, mnist_training_and_held_out_digits

__all__ = ["DigitClassifier", "class_accuracy", "digit_score", "get_digit_classifier", "images_to_features"]


@dataclass
class DigitClassifier:
    """
    A digit classifier for one resolution, with its accuracy on real digits it did not train on.

    Args:
        model (`sklearn.neural_network.MLPClassifier`):
            The fitted classifier; inputs are flattened [R, R] grayscale images in [-1, 1].
        resolution (`int`):
            Side of the square images it takes.
        held_out_accuracy (`float`):
            Accuracy on the real digits it never saw (the diffusion model's training split).
        real_confident_share (`float`):
            Share of those real digits classified with probability ≥ 0.9: the ceiling a generator can hope for.
    """

    model: object
    resolution: int
    held_out_accuracy: float
    real_confident_share: float

    def predict_proba(self, images: Sequence[Image.Image] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities, shape [N, 10], of images in any form `images_to_features` accepts."""
        return self.model.predict_proba(images_to_features(images, self.resolution))


def images_to_features(images: Sequence[Image.Image] | np.ndarray | torch.Tensor, resolution: int) -> np.ndarray:
    """
    Flattened grayscale features in [-1, 1], shape [N, resolution²], from images in the common layouts.

    Args:
        images (`Sequence[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            - a list of PIL images (any mode, any size; resized like the training digits);
            - a `torch.Tensor` [N, C, H, W] in the model's space [-1, 1] (what a sampling loop produces);
            - a `np.ndarray` [N, H, W, C] or [N, H, W] in [0, 1] (diffusers pipelines' `output_type="np"`).
            Colour images are averaged to gray; arrays must already be `resolution`×`resolution`.
        resolution (`int`):
            Side of the square images the classifier takes.

    Returns:
        `np.ndarray`: float32, shape [N, resolution²].
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"`images` as a tensor must be [N, C, H, W] in [-1, 1], got shape {tuple(images.shape)}.")
        gray = images.detach().float().cpu().clamp(-1, 1).mean(dim=1).numpy()
    elif isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(f"`images` as an array must be [N, H, W(, C)] in [0, 1], got shape {images.shape}.")
        gray = (images.mean(axis=-1) if images.ndim == 4 else images).astype(np.float32).clip(0, 1) * 2 - 1
    else:
        transform = make_transform(resolution, in_channels=1, center_crop=True)
        gray = np.stack([transform(image)[0].numpy() for image in images]) if len(images) else np.zeros((0, 1, 1))
    if len(gray) and gray.shape[1:] != (resolution, resolution):
        raise ValueError(
            f"`images` are {gray.shape[1]}×{gray.shape[2]} but the classifier takes {resolution}×{resolution}; "
            f"pass PIL images to have them resized, or use `get_digit_classifier(resolution={gray.shape[1]})`."
        )
    return gray.reshape(len(gray), -1).astype(np.float32)


def image_resolution(images: Sequence[Image.Image] | np.ndarray | torch.Tensor) -> int:
    """The side of tensor (N, C, H, W) or array (N, H, W(, C)) images; PIL images, resized anyway, get 16."""
    if isinstance(images, torch.Tensor):
        return int(images.shape[-1])
    if isinstance(images, np.ndarray):
        return int(images.shape[2])
    return 16


@functools.lru_cache(maxsize=8)
def get_digit_classifier(resolution: int = 16) -> DigitClassifier:
    """
    A digit classifier trained on the 1000 digits held out from diffusion training and measured on the other 4000;
    trained once per process and resolution.

    Args:
        resolution (`int`, defaults to 16):
            Side of the square images, as the diffusion model generates them.

    Returns:
        `DigitClassifier`.
    """
    from sklearn.neural_network import MLPClassifier

    if not isinstance(resolution, int) or resolution < 4:
        raise ValueError(f"`resolution` must be an int ≥ 4, got {resolution!r}.")
    diffusion_train, held_out = mnist_training_and_held_out_digits()
    x_fit = images_to_features(held_out["image"], resolution)
    x_eval = images_to_features(diffusion_train["image"], resolution)
    # One hidden layer and light L2 train in seconds; stronger regularization lowers accuracy and makes even real
    # digits rarely reach 0.9 confidence.
    model = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-2, max_iter=300, random_state=0)
    model.fit(x_fit, np.asarray(held_out["label"]))
    proba = model.predict_proba(x_eval)
    return DigitClassifier(
        model=model,
        resolution=resolution,
        held_out_accuracy=float((proba.argmax(1) == np.asarray(diffusion_train["label"])).mean()),
        real_confident_share=float((proba.max(1) >= 0.9).mean()),
    )


def digit_score(
    images: Sequence[Image.Image] | np.ndarray | torch.Tensor,
    resolution: int | None = None,
    confidence: float = 0.9,
    classifier: DigitClassifier | None = None,
) -> dict:
    """
    Score generated digits with a classifier trained on real held-out digits.

    Args:
        images (`Sequence[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The samples, in any layout `images_to_features` accepts.
        resolution (`int`, *optional*):
            The classifier's resolution; by default the images' own side (PIL images: 16).
        confidence (`float`, defaults to 0.9):
            A sample counts as a recognizable digit when its top class probability is at least this.
        classifier (`DigitClassifier`, *optional*):
            Defaults to `get_digit_classifier(resolution)`.

    Returns:
        `dict` with
            - `confident_share` (`float`): share of samples with top probability ≥ `confidence`;
            - `class_histogram` (`list[int]`): for each digit 0..9, the number of confident samples predicted as it;
            - `class_entropy` (`float`): entropy of that histogram divided by log 10 (1 = perfectly balanced);
            - `max_min_ratio` (`float`): largest over smallest bin of the histogram (`inf` if a class is missing);
            - `num_samples` (`int`), `confidence` (`float`), `resolution` (`int`);
            - `classifier_accuracy` (`float`), `real_confident_share` (`float`): the classifier on real digits
              it never saw, i.e. what the score means and its ceiling.
    """
    classifier, proba = _probabilities(images, resolution, confidence, classifier)
    confident = proba.max(1) >= confidence
    histogram = np.bincount(proba.argmax(1)[confident], minlength=10)
    share = histogram / max(1, histogram.sum())
    entropy = float(-(share[share > 0] * np.log(share[share > 0])).sum() / np.log(10))
    return {
        "confident_share": float(confident.mean()),
        "class_histogram": histogram.tolist(),
        "class_entropy": entropy,
        "max_min_ratio": float(histogram.max() / histogram.min()) if histogram.min() > 0 else float("inf"),
        **_about(classifier, len(proba), confidence),
    }


def _probabilities(
    images: Sequence[Image.Image] | np.ndarray | torch.Tensor,
    resolution: int | None,
    confidence: float,
    classifier: DigitClassifier | None,
) -> tuple[DigitClassifier, np.ndarray]:
    """The classifier (by default the one of the images' resolution) and its probabilities [N, 10] of `images`."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    if resolution is None:
        resolution = classifier.resolution if classifier is not None else image_resolution(images)
    classifier = classifier or get_digit_classifier(resolution)
    proba = classifier.predict_proba(images)
    if len(proba) == 0:
        raise ValueError("`images` is empty.")
    return classifier, proba


def _about(classifier: DigitClassifier, num_samples: int, confidence: float) -> dict:
    """What a score means: its sample count and threshold, and the classifier's accuracy and ceiling on real digits."""
    return {
        "num_samples": int(num_samples),
        "confidence": confidence,
        "resolution": classifier.resolution,
        "classifier_accuracy": classifier.held_out_accuracy,
        "real_confident_share": classifier.real_confident_share,
    }


def class_accuracy(
    images: Sequence[Image.Image] | np.ndarray | torch.Tensor,
    requested_labels: Sequence[int] | np.ndarray | torch.Tensor,
    confidence: float = 0.9,
    classifier: DigitClassifier | None = None,
) -> dict:
    """
    Score the samples of a class-conditional digit model: a sample is right when the classifier, trained on real
    held-out digits, gives its top probability ≥ `confidence` to the digit it was asked to be.

    Args:
        images (`Sequence[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The samples, in any layout `images_to_features` accepts.
        requested_labels (`Sequence[int]`, `np.ndarray` or `torch.Tensor`):
            The digit (0-9) each sample was drawn for, one per image.
        confidence (`float`, defaults to 0.9):
            The probability the requested digit must reach.
        classifier (`DigitClassifier`, *optional*):
            Defaults to `get_digit_classifier(R)`, R the images' side (PIL images: 16).

    Returns:
        `dict` with
            - `accuracy` (`float`): share of samples classified as their requested digit with probability ≥
              `confidence`;
            - `confident_share` (`float`): share classified as any digit with probability ≥ `confidence`;
            - `per_class_accuracy` (`list[float | None]`): `accuracy` among the samples requested as each digit 0..9
              (`None` for a digit none was requested as);
            - `per_class_count` (`list[int]`): how many samples were requested as each digit;
            - `num_samples`, `confidence`, `resolution`, `classifier_accuracy`, `real_confident_share`: as in
              `digit_score`.
    """
    labels = np.asarray(requested_labels.cpu() if isinstance(requested_labels, torch.Tensor) else requested_labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or ((labels < 0) | (labels > 9)).any():
        raise ValueError(f"`requested_labels` must be a 1-d sequence of digits 0-9, got {labels.tolist()!r:.200}.")
    classifier, proba = _probabilities(images, None, confidence, classifier)
    if len(labels) != len(proba):
        raise ValueError(f"`requested_labels` holds {len(labels)} labels for {len(proba)} images; give one per image.")
    confident = proba.max(1) >= confidence
    right = confident & (proba.argmax(1) == labels)
    counts = np.bincount(labels, minlength=10)
    right_counts = np.bincount(labels[right], minlength=10)
    return {
        "accuracy": float(right.mean()),
        "confident_share": float(confident.mean()),
        "per_class_accuracy": [float(r / n) if n else None for r, n in zip(right_counts, counts)],
        "per_class_count": counts.tolist(),
        **_about(classifier, len(proba), confidence),
    }
