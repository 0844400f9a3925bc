"""The named configurations: the paper's parameter counts, stock UNet2DModel as the oracle for size and cost."""

import pytest
import torch
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from hf_ddpm.models.presets import PRESETS
from hf_ddpm.models.unet_2d import DDPMUNet2DModel

# name: (parameters, multiply-accumulates per forward at batch 1 and sample_size). The paper's counts: 35.7M for
# CIFAR10 and 114M at 256² (DDPM Appendix B); the exact figures are those of google/ddpm-cifar10-32 and
# google/ddpm-church-256. MACs are FlopCounterMode's FLOPs / 2 (convolutions, linear layers, attention products).
EXPECTED = {
    "ddpm-cifar10": (35_746_307, 6_221_856_768),
    "ddpm-256": (113_673_219, 248_513_757_184),
    "digits-16": (1_112_801, 65_683_456),
    "digits-32": (1_112_801, 281_706_496),
    "tiny": (45_259, 1_061_376),
}


def _macs(model, config):
    size = config["sample_size"]
    x = torch.zeros(1, config["in_channels"], size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, torch.tensor([10], device="meta"))
    return counter.get_total_flops() // 2


def test_preset_names_are_the_documented_ones():
    assert set(DDPMUNet2DModel.presets()) == set(EXPECTED) == set(PRESETS)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_parameters_and_macs_match_stock_unet2dmodel(name):
    config = PRESETS[name]
    # On the meta device: sizes and costs without allocating or computing anything.
    with torch.device("meta"):
        ours = DDPMUNet2DModel.from_preset(name)
        stock = UNet2DModel(**config)
    params, macs = EXPECTED[name]
    assert ours.num_parameters() == stock.num_parameters() == params
    assert _macs(ours, config) == _macs(stock, config) == macs


def test_paper_network_layouts():
    cifar = PRESETS["ddpm-cifar10"]
    assert [c // 128 for c in cifar["block_out_channels"]] == [1, 2, 2, 2]
    assert cifar["layers_per_block"] == 2 and cifar["dropout"] == 0.1
    # Attention at 16x16: the second of the resolutions 32, 16, 8, 4.
    assert cifar["down_block_types"].index("AttnDownBlock2D") == 1
    big = PRESETS["ddpm-256"]
    assert [c // 128 for c in big["block_out_channels"]] == [1, 1, 2, 2, 4, 4]
    # 256 / 2^4 = 16.
    assert big["down_block_types"].index("AttnDownBlock2D") == 4
    assert big["up_block_types"][::-1].index("AttnUpBlock2D") == 4


def test_small_preset_runs_forward_on_cpu():
    model = DDPMUNet2DModel.from_preset("digits-16").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 16, 16), torch.tensor([0, 999])).sample
    assert out.shape == (2, 1, 16, 16)
    assert torch.isfinite(out).all()


def test_from_preset_overrides_and_config():
    model = DDPMUNet2DModel.from_preset("tiny", in_channels=1, out_channels=1, dropout=0.2)
    assert model.config.in_channels == 1 and model.config.dropout == 0.2
    assert tuple(model.config.block_out_channels) == PRESETS["tiny"]["block_out_channels"]
    # presets() hands out copies: editing one does not change the next model.
    DDPMUNet2DModel.presets()["tiny"]["in_channels"] = 7
    assert DDPMUNet2DModel.from_preset("tiny").config.in_channels == 3


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match=r"'ddpm-cifar100'.*\['ddpm-256', 'ddpm-cifar10', 'digits-16'"):
        DDPMUNet2DModel.from_preset("ddpm-cifar100")
