"""The AdamW factory: every implementation takes Adam's step (Kingma & Ba 2015, Algorithm 1), "auto" is fused."""

import pytest
import torch

from hf_ddpm.training.optimizer import ADAM_IMPLEMENTATIONS, adamw


def _parameters(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in [(7, 5), (5,), (3, 2, 2, 2)]]


def _gradients(parameters, step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=generator) for p in parameters]


def _adam_reference(parameters, steps: int, lr: float, betas, eps: float, weight_decay: float):
    """Algorithm 1 of Kingma & Ba with bias correction, plus AdamW's decoupled decay θ ← θ(1 − lr·λ), in float64."""
    theta = [p.detach().double().clone() for p in parameters]
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    beta1, beta2 = betas
    for step in range(1, steps + 1):
        for i, g in enumerate(_gradients(parameters, step)):
            g = g.double()
            theta[i] *= 1 - lr * weight_decay
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g**2
            m_hat, v_hat = m[i] / (1 - beta1**step), v[i] / (1 - beta2**step)
            theta[i] -= lr * m_hat / (v_hat.sqrt() + eps)
    return theta


@pytest.mark.parametrize("implementation", ADAM_IMPLEMENTATIONS)
def test_every_implementation_takes_adams_step(implementation):
    parameters = _parameters()
    kwargs = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
    expected = _adam_reference(parameters, steps=5, **kwargs)
    optimizer = adamw(parameters, implementation=implementation, **kwargs)
    for step in range(1, 6):
        for p, g in zip(parameters, _gradients(parameters, step)):
            p.grad = g
        optimizer.step()
    for p, e in zip(parameters, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-6)


def test_auto_is_fused_on_cpu_and_falls_back_where_torch_has_no_fused_kernel():
    assert adamw(_parameters(), implementation="auto").defaults["fused"] is True
    meta = [torch.nn.Parameter(torch.empty(3, device="meta"))]
    assert not adamw(meta, implementation="auto").defaults["fused"]
    with pytest.raises(ValueError, match="fused AdamW needs floating-point parameters on one of"):
        adamw(meta, implementation="fused")


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="`implementation` must be one of"):
        adamw(_parameters(), implementation="apex")
