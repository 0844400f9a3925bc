"""Fixtures of the scheduler tests: data laws whose exact noise predictor is known (`tests/closed_form.py`)."""

import pytest
from closed_form import GaussianMixture


@pytest.fixture
def gaussian() -> GaussianMixture:
    """x_0 ~ N(0.3, 0.5²): a well-conditioned exact denoiser for drop-in comparisons."""
    return GaussianMixture(weights=(1.0,), means=(0.3,), stds=(0.5,))


@pytest.fixture
def mixture() -> GaussianMixture:
    """An asymmetric two-component mixture: tests both location and weights of a multimodal law."""
    return GaussianMixture(weights=(0.3, 0.7), means=(-0.6, 0.5), stds=(0.15, 0.2))
