"""The building blocks' own pieces that stock diffusers has no twin for: the dropout."""

import pytest
import torch
import torch.nn.functional as F

from hf_ddpm.models.blocks import Dropout, dropout


def _keep_fraction_bounds(n: int, keep: float, sigmas: float = 5.0) -> tuple[float, float]:
    """Binomial(n, keep)/n lies within `sigmas` standard deviations of `keep` (5σ: ~6e-7 false alarms)."""
    half_width = sigmas * (keep * (1 - keep) / n) ** 0.5
    return keep - half_width, keep + half_width


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_one_minus_p_and_rescales(p):
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    y = dropout(x, p, training=True)
    kept = y != 0
    lo, hi = _keep_fraction_bounds(x.numel(), 1 - p)
    assert lo < kept.float().mean().item() < hi
    # Kept elements are scaled by 1/(1 - p) as F.dropout does, so E[y] = x.
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    reference = F.dropout(x, p, training=True)
    torch.testing.assert_close(y[kept][0], reference[reference != 0][0])


def test_dropout_gradient_is_the_scaled_mask():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    y.backward(torch.ones_like(y))
    scaled_mask = torch.where(y != 0, 1 / 0.7, 0.0)
    torch.testing.assert_close(x.grad, scaled_mask)
    torch.testing.assert_close(y, x.detach() * scaled_mask)


def test_dropout_keep_probability_is_exact_for_bfloat16_inputs():
    # A bfloat16 uniform would keep 1 - 26/256 = 0.8984 (10σ away at this n) instead of 0.9.
    torch.manual_seed(0)
    y = dropout(torch.ones(4_000_000, dtype=torch.bfloat16), 0.1, training=True)
    assert y.dtype == torch.bfloat16
    lo, hi = _keep_fraction_bounds(y.numel(), 0.9)
    assert lo < (y != 0).float().mean().item() < hi


def test_dropout_is_the_identity_in_eval_or_at_zero_and_zero_at_one():
    x = torch.randn(3, 4)
    assert dropout(x, 0.1, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))


def test_dropout_is_seeded_by_the_global_generator_and_keeps_the_layout():
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(3)
    first = dropout(x, 0.2, training=True)
    torch.manual_seed(3)
    second = dropout(x, 0.2, training=True)
    assert torch.equal(first, second)
    assert first.is_contiguous(memory_format=torch.channels_last)


def test_dropout_module_follows_train_and_eval_like_nn_dropout():
    module = Dropout(0.25)
    assert repr(module) == repr(torch.nn.Dropout(0.25))
    x = torch.ones(10_000)
    assert (module(x) == 0).any()
    module.eval()
    assert module(x) is x
