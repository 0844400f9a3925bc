"""Bad config or bad input at DDPMUNet2DModel's boundary: one clear error naming the argument, the value and what is
allowed, raised before any computation. To add a case, add a row to CASES."""

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from hf_ddpm.models.presets import PRESETS
from hf_ddpm.models.unet_2d import DDPMUNet2DModel

TINY = PRESETS["tiny"]  # channels (8, 16), attention at 16 channels (down_blocks.1, mid_block, up_blocks.0)


@dataclass
class Case:
    """
    A bad call and the error it must raise.

    `config` overrides the tiny preset. With `inputs` None the error is expected from the constructor; otherwise the
    model builds and `inputs` overrides the forward's arguments (a zero `(2, 3, 8, 8)` sample, timestep 5, no labels).
    """

    error: type[Exception]
    words: tuple[str, ...]  # each must appear in the message
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] | None = None


LABELLED = {"num_class_embeds": 4}

CASES = {
    # config
    "in_channels_zero": Case(ValueError, ("`in_channels`", "positive integer", "got 0"), {"in_channels": 0}),
    "out_channels_negative": Case(ValueError, ("`out_channels`", "positive integer", "got -3"), {"out_channels": -3}),
    "out_channels_float": Case(ValueError, ("`out_channels`", "positive integer", "got 3.0"), {"out_channels": 3.0}),
    "block_out_channels_zero_entry": Case(
        ValueError, ("`block_out_channels`", "positive integer", "got 0", "[0, 16]"), {"block_out_channels": (0, 16)}
    ),
    "time_embedding_dim_zero": Case(
        ValueError, ("`time_embedding_dim`", "positive integer", "got 0"), {"time_embedding_dim": 0}
    ),
    "layers_per_block_zero": Case(
        ValueError, ("`layers_per_block`", "positive integer", "got 0"), {"layers_per_block": 0}
    ),
    "unknown_down_block": Case(
        ValueError,
        ("`down_block_types`", "'SkipDownBlock2D'", "['DownBlock2D', 'AttnDownBlock2D']"),
        {"down_block_types": ("SkipDownBlock2D", "AttnDownBlock2D")},
    ),
    "unknown_up_block": Case(
        ValueError,
        ("`up_block_types`", "'CrossAttnUpBlock2D'", "['UpBlock2D', 'AttnUpBlock2D']"),
        {"up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")},
    ),
    "fourier_time_embedding": Case(
        ValueError, ("`time_embedding_type`", "'fourier'", "['positional']"), {"time_embedding_type": "fourier"}
    ),
    "unknown_act_fn": Case(ValueError, ("`act_fn`", "'tanh'", "'silu'"), {"act_fn": "tanh"}),
    "spatial_time_scale_shift": Case(
        ValueError,
        ("`resnet_time_scale_shift`", "'spatial'", "['default', 'scale_shift']"),
        {"resnet_time_scale_shift": "spatial"},
    ),
    "resnet_downsample": Case(
        ValueError, ("`downsample_type`", "'resnet'", "['conv']"), {"downsample_type": "resnet"}
    ),
    "resnet_upsample": Case(ValueError, ("`upsample_type`", "'resnet'", "['conv']"), {"upsample_type": "resnet"}),
    "cross_attention_mid_block": Case(
        ValueError,
        ("`mid_block_type`", "'UNetMidBlock2DCrossAttn'", "['UNetMidBlock2D', None]"),
        {"mid_block_type": "UNetMidBlock2DCrossAttn"},
    ),
    "timestep_class_embedding": Case(
        ValueError, ("`class_embed_type`", "'timestep'", "[None]"), {"class_embed_type": "timestep"}
    ),
    "lengths_differ": Case(ValueError, ("same non-zero length", "3, 2 and 2"), {"block_out_channels": (8, 16, 16)}),
    "norm_groups_not_dividing": Case(
        ValueError, ("`norm_num_groups`=3", "must divide", "[8, 16]"), {"norm_num_groups": 3}
    ),
    "attn_norm_groups_not_dividing": Case(ValueError, ("`attn_norm_num_groups`=5", "16"), {"attn_norm_num_groups": 5}),
    # UNet2DModel builds an attention of 16 // 32 = 0 heads here, and fails in its forward.
    "head_wider_than_an_attention": Case(
        ValueError, ("`attention_head_dim`=32", "between 1 and", "(16)", "'mid_block': 16"), {"attention_head_dim": 32}
    ),
    "head_zero": Case(ValueError, ("`attention_head_dim`=0", "between 1 and"), {"attention_head_dim": 0}),
    "dropout_one": Case(ValueError, ("`dropout`", "[0, 1)", "got 1.0"), {"dropout": 1.0}),
    "num_class_embeds_zero": Case(ValueError, ("`num_class_embeds`", "got 0"), {"num_class_embeds": 0}),
    # forward
    "sample_integer": Case(
        TypeError, ("`sample`", "floating-point", "torch.int64"), inputs={"sample": torch.zeros(2, 3, 8, 8).long()}
    ),
    "sample_uint8_image": Case(
        TypeError, ("`sample`", "floating-point", "torch.uint8"), inputs={"sample": torch.zeros(2, 3, 8, 8).byte()}
    ),
    "sample_not_a_tensor": Case(TypeError, ("`sample`", "floating-point", "list"), inputs={"sample": [[0.0]]}),
    "sample_wrong_channels": Case(
        ValueError,
        ("`sample`", "(batch, 3, height, width)", "(2, 1, 8, 8)"),
        inputs={"sample": torch.zeros(2, 1, 8, 8)},
    ),
    "sample_three_dims": Case(
        ValueError, ("`sample`", "(batch, 3, height, width)", "(2, 3, 8)"), inputs={"sample": torch.zeros(2, 3, 8)}
    ),
    "sample_size_not_divisible": Case(
        ValueError, ("`sample`", "divisible by 2", "(8, 5)"), inputs={"sample": torch.zeros(2, 3, 8, 5)}
    ),
    "timestep_length_not_batch": Case(
        ValueError, ("`timestep`", "batch size 2", "(3,)"), inputs={"timestep": torch.tensor([1, 2, 3])}
    ),
    "timestep_two_dims": Case(ValueError, ("`timestep`", "(2, 1)"), inputs={"timestep": torch.ones(2, 1)}),
    "class_labels_missing": Case(ValueError, ("`class_labels` are required", "4 classes"), LABELLED, inputs={}),
    "class_labels_length_not_batch": Case(
        ValueError,
        ("`class_labels`", "batch size 2", "(3,)"),
        LABELLED,
        inputs={"class_labels": torch.tensor([0, 1, 2])},
    ),
    "class_labels_float": Case(
        TypeError, ("`class_labels`", "int64 or int32", "torch.float32"), LABELLED, {"class_labels": torch.zeros(2)}
    ),
    "class_labels_list": Case(
        TypeError, ("`class_labels`", "int64 or int32", "list"), LABELLED, {"class_labels": [0, 1]}
    ),
    "class_labels_on_unconditional_model": Case(
        ValueError,
        ("`class_labels`", "unconditional", "`num_class_embeds` is None"),
        inputs={"class_labels": torch.tensor([0, 1])},
    ),
}


def _guarded(config):
    """The model, plus a record of whether its first convolution or time embedding ever ran."""
    model = DDPMUNet2DModel(**config).eval()
    calls = []
    model.conv_in.register_forward_hook(lambda *args: calls.append(1))
    model.time_embedding.register_forward_hook(lambda *args: calls.append(1))
    return model, calls


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_or_input_raises_naming_argument_value_and_allowed(name):
    case = CASES[name]
    config = {**TINY, **case.config}
    if case.inputs is None:
        with pytest.raises(case.error) as raised:
            DDPMUNet2DModel(**config)
    else:
        model, calls = _guarded(config)
        inputs = {"sample": torch.zeros(2, 3, 8, 8), "timestep": 5, "class_labels": None, **case.inputs}
        with pytest.raises(case.error) as raised:
            model(**inputs)
        assert calls == [], "the error must come before any computation"
    message = str(raised.value)
    missing = [word for word in case.words if word not in message]
    assert not missing, f"{missing} not in {message!r}"
