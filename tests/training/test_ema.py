"""The EMA of the weights: the same shadow weights, decay and checkpoints as diffusers' EMAModel (the oracle)."""

import pytest
import torch
from diffusers.training_utils import EMAModel as StockEMAModel

from hf_ddpm.training.ema import EMAModel

SETTINGS = [
    {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 0.75},  # examples/train.py's
    {"decay": 0.9, "use_ema_warmup": False, "update_after_step": 3},
]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Linear(6, 4))
    model[1].weight.requires_grad_(False)  # a frozen parameter is copied, not averaged
    return model


def _train_step(model: torch.nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("settings", SETTINGS)
def test_step_matches_diffusers_emamodel(settings):
    model = _model()
    ours, stock = EMAModel(model.parameters(), **settings), StockEMAModel(model.parameters(), **settings)
    for step in range(25):
        _train_step(model, step)
        ours.step(model.parameters())
        stock.step(model.parameters())
        assert ours.cur_decay_value == stock.cur_decay_value
    assert ours.optimization_step == stock.optimization_step == 25
    for got, expected in zip(ours.shadow_params, stock.shadow_params, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # The frozen GroupNorm weight is the model's own, not an average.
    assert torch.equal(ours.shadow_params[2], model[1].weight)


def test_step_is_the_lerp_towards_the_parameters():
    model = _model()
    ema = EMAModel(model.parameters(), decay=0.9, use_ema_warmup=False)
    ema.step(model.parameters())  # diffusers' first step uses decay 0: a copy
    before = [s.clone() for s in ema.shadow_params]
    _train_step(model, 1)
    ema.step(model.parameters())
    decay = ema.cur_decay_value
    assert 0 < decay <= 0.9
    for shadow, old, p in zip(ema.shadow_params, before, model.parameters(), strict=True):
        expected = p.detach() if not p.requires_grad else decay * old + (1 - decay) * p.detach()
        torch.testing.assert_close(shadow, expected)


def test_checkpoints_are_interchangeable_with_diffusers(tmp_path):
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        sample_size=8, block_out_channels=(8,), down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
        layers_per_block=1, norm_num_groups=4,
    )  # fmt: skip
    ours = EMAModel(unet.parameters(), model_cls=UNet2DModel, model_config=unet.config)
    _train_step(unet, 0)
    ours.step(unet.parameters())
    ours.save_pretrained(tmp_path / "ema")
    stock = StockEMAModel.from_pretrained(tmp_path / "ema", UNet2DModel)
    assert stock.optimization_step == 1
    for got, expected in zip(stock.shadow_params, ours.shadow_params, strict=True):
        torch.testing.assert_close(got, expected)
    # and back: a stock state dict loads into ours and the next steps agree.
    ours_again = EMAModel(unet.parameters())
    ours_again.load_state_dict(stock.state_dict())
    _train_step(unet, 1)
    ours_again.step(unet.parameters())
    stock.step(unet.parameters())
    for got, expected in zip(ours_again.shadow_params, stock.shadow_params, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_shadow_weights_of_another_dtype_fall_back_to_diffusers_update():
    model = _model()
    ours = EMAModel(model.parameters(), decay=0.9, use_ema_warmup=False)
    stock = StockEMAModel(model.parameters(), decay=0.9, use_ema_warmup=False)
    ours.to(dtype=torch.float64), stock.to(dtype=torch.float64)
    for step in range(3):
        _train_step(model, step)
        ours.step(model.parameters())
        stock.step(model.parameters())
    for got, expected in zip(ours.shadow_params, stock.shadow_params, strict=True):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected)


def test_wrong_parameter_count_raises():
    model = _model()
    ema = EMAModel(model.parameters())
    with pytest.raises(ValueError, match=r"got 2 parameters but the EMA tracks 6"):
        ema.step(list(model.parameters())[:2])
