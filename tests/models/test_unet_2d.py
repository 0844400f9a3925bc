"""DDPMUNet2DModel against its oracle, stock diffusers UNet2DModel: same config + same weights = same outputs."""

import json
import warnings

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

from hf_ddpm.models.presets import PRESETS
from hf_ddpm.models.unet_2d import DDPMUNet2DModel, UNet2DOutput

TINY = PRESETS["tiny"]

# Small configs that together exercise every supported field value.
EQUIVALENCE_CONFIGS = {
    "tiny_preset": TINY,
    "diffusers_defaults_small": {  # stock defaults except the sizes: cos-first, shift 0, padding 1, 8-dim heads
        "block_out_channels": (16, 32, 32),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
    },
    "two_layers_single_head_odd_channels": {
        **TINY,
        "in_channels": 1,
        "out_channels": 2,
        "layers_per_block": 2,
        "attention_head_dim": None,
        "block_out_channels": (12, 24),
        "norm_num_groups": 4,
    },
    "scale_shift_no_mid_attention_norm": {  # scale_shift leaves the middle attention without GroupNorm
        **TINY,
        "resnet_time_scale_shift": "scale_shift",
        "mid_block_scale_factor": 2**0.5,
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    },
    "scale_shift_with_attn_norm_groups": {**TINY, "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 2},
    "no_mid_attention_mish_centered": {
        **TINY,
        "add_attention": False,
        "act_fn": "mish",
        "center_input_sample": True,
        "norm_eps": 1e-5,
    },
    "no_mid_block_custom_time_dim_head_not_dividing": {
        **TINY,
        "mid_block_type": None,
        "time_embedding_dim": 24,
        "attention_head_dim": 6,
    },
    "class_conditional_gelu": {**TINY, "num_class_embeds": 10, "act_fn": "gelu"},
    # The head size only matters where attention is built: wider than a level without attention is fine.
    "head_wider_than_a_level_without_attention": {
        "block_out_channels": (4, 8),
        "norm_num_groups": 4,
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    },
    "head_32_attention_in_the_middle_only": {
        "block_out_channels": (16, 32),
        "norm_num_groups": 8,
        "attention_head_dim": 32,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
    },
    "head_64_no_attention_at_all": {**TINY, "attention_head_dim": 64, "add_attention": False}
    | {"down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D")},
}


def _paired(config, seed=0):
    """Stock UNet2DModel with random weights, and DDPMUNet2DModel holding the same weights (strict load)."""
    torch.manual_seed(seed)
    stock = UNet2DModel(**config).eval()
    ours = DDPMUNet2DModel(**config).eval()
    ours.load_state_dict(stock.state_dict(), strict=True)
    return stock, ours


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _inputs(config, batch=3, size=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = size or config.get("sample_size") or 8
    x = torch.randn(batch, config.get("in_channels", 3), size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t


@pytest.mark.filterwarnings("ignore:`attention_head_dim`=6 does not divide:UserWarning")  # pinned below
@pytest.mark.parametrize("name", list(EQUIVALENCE_CONFIGS))
def test_matches_stock_unet2dmodel_with_same_weights(name):
    config = EQUIVALENCE_CONFIGS[name]
    stock, ours = _paired(config)
    # Same keys, in the same order (so optimizer states, which index parameters(), carry over), same shapes.
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in stock.state_dict().items()
    ]
    x, t = _inputs(config, size=8)
    kwargs = {"class_labels": torch.tensor([0, 3, 9])} if config.get("num_class_embeds") else {}
    with torch.no_grad():
        expected = stock(x, t, **kwargs).sample
        got = ours(x, t, **kwargs).sample
    assert got.shape == expected.shape
    assert _rel_err(got, expected) <= 1e-4


SEEDED_CONFIGS = {
    "tiny": TINY,
    "digits-16": PRESETS["digits-16"],
    "ddpm-cifar10": PRESETS["ddpm-cifar10"],
    "attention_at_every_level_two_layers": {
        "block_out_channels": (8, 16, 24),
        "down_block_types": ("AttnDownBlock2D",) * 3,
        "up_block_types": ("AttnUpBlock2D",) * 3,
        "layers_per_block": 2,
        "norm_num_groups": 4,
        "attention_head_dim": 4,
    },
    "class_conditional": {**TINY, "num_class_embeds": 10},
    "scale_shift": {**TINY, "resnet_time_scale_shift": "scale_shift"},
    "no_mid_attention": {**TINY, "add_attention": False},
    "no_mid_block": {**TINY, "mid_block_type": None},
}


@pytest.mark.parametrize("name", list(SEEDED_CONFIGS))
def test_same_seed_gives_stock_initial_weights(name):
    config = SEEDED_CONFIGS[name]
    torch.manual_seed(0)
    stock = UNet2DModel(**config)
    stock_next_draw = torch.rand(1)
    torch.manual_seed(0)
    ours = DDPMUNet2DModel(**config)
    next_draw = torch.rand(1)
    expected, got = stock.state_dict(), ours.state_dict()
    assert list(got) == list(expected)
    assert [key for key in expected if not torch.equal(got[key], expected[key])] == []
    assert torch.equal(next_draw, stock_next_draw)  # and the global generator is left where stock leaves it


def test_head_dim_not_dividing_warns_and_builds_stocks_narrower_attention():
    config = {**TINY, "attention_head_dim": 6}  # 16 channels: 2 heads of 6, queries 12 channels wide
    with pytest.warns(UserWarning, match=r"`attention_head_dim`=6 does not divide .*'down_blocks.1': 16"):
        stock, ours = _paired(config)
    for name in ("down_blocks.1.attentions.0", "mid_block.attentions.0", "up_blocks.0.attentions.1"):
        ours_attention, stock_attention = ours.get_submodule(name), stock.get_submodule(name)
        assert ours_attention.to_q.weight.shape == stock_attention.to_q.weight.shape == (12, 16)
        assert ours_attention.heads == stock_attention.heads == 2
    x, t = _inputs(config)
    with torch.no_grad():
        assert _rel_err(ours(x, t).sample, stock(x, t).sample) <= 1e-4


NO_ATTENTION = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2, "add_attention": False}


def test_head_dim_dividing_every_attention_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DDPMUNet2DModel(**{**TINY, "attention_head_dim": 4})
        DDPMUNet2DModel(**{**TINY, **NO_ATTENTION, "attention_head_dim": 6})  # no attention: nothing to divide


@pytest.mark.parametrize("storage_dtype", [torch.float16, torch.bfloat16])
def test_layerwise_casting_runs_like_stock(storage_dtype):
    config = {**TINY, "num_class_embeds": 10}
    stock, ours = _paired(config)
    x, t = _inputs(config)
    labels = torch.tensor([0, 3, 9])
    with torch.no_grad():
        float32_out = stock(x, t, labels).sample
        for model in (stock, ours):
            model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
        # Weights stored in the storage dtype, norms left in float32, entry for entry as in stock.
        assert {k: v.dtype for k, v in ours.state_dict().items()} == {
            k: v.dtype for k, v in stock.state_dict().items()
        }
        assert ours.conv_in.weight.dtype == storage_dtype and ours.conv_norm_out.weight.dtype == torch.float32
        assert ours.dtype == torch.float32  # the compute dtype
        got, expected = ours(x, t, labels).sample, stock(x, t, labels).sample
    assert got.dtype == expected.dtype == torch.float32
    assert _rel_err(got, expected) <= 1e-5  # measured 5e-7 (float32 summation order)
    # Only the rounding of the stored weights separates it from the float32 model (measured 5e-4 / 4e-3).
    assert 0 < _rel_err(got, float32_out) < 1e-2


def test_cifar10_layout_matches_stock_google_config(tmp_path):
    # The config.json of google/ddpm-cifar10-32 as published (diffusers 0.0.4: several keys absent, so both
    # classes fall back to their defaults for them).
    google_config = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.0.4",
        "act_fn": "silu",
        "attention_head_dim": None,
        "block_out_channels": [128, 256, 256, 256],
        "center_input_sample": False,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "in_channels": 3,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-06,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 32,
        "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    }
    torch.manual_seed(0)
    stock = UNet2DModel.from_config(google_config).eval()
    stock.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(google_config))  # exactly the published file

    ours = DDPMUNet2DModel.from_pretrained(tmp_path).eval()
    assert ours.num_parameters() == stock.num_parameters() == 35_746_307
    # Same network as the preset (dropout aside, which inference checkpoints leave at 0).
    preset = {k: v for k, v in PRESETS["ddpm-cifar10"].items() if k != "dropout"}
    for key, value in preset.items():
        assert ours.config[key] == (list(value) if isinstance(value, tuple) else value), key

    x, t = _inputs(google_config, batch=1)
    with torch.no_grad():
        assert _rel_err(ours(x, t).sample, stock(x, t).sample) <= 1e-4


@pytest.mark.slow
def test_256_layout_matches_stock():
    stock, ours = _paired(PRESETS["ddpm-256"])
    x, t = _inputs(PRESETS["ddpm-256"], batch=1)
    with torch.no_grad():
        assert _rel_err(ours(x, t).sample, stock(x, t).sample) <= 1e-4


def test_from_pretrained_reads_stock_save_and_stock_reads_ours(tmp_path):
    stock, _ = _paired(TINY)
    stock.save_pretrained(tmp_path / "stock")
    ours = DDPMUNet2DModel.from_pretrained(tmp_path / "stock").eval()
    x, t = _inputs(TINY)
    with torch.no_grad():
        expected = stock(x, t).sample
        assert _rel_err(ours(x, t).sample, expected) <= 1e-4

        ours.save_pretrained(tmp_path / "ours")
        assert (tmp_path / "ours" / "diffusion_pytorch_model.safetensors").exists()
        back = UNet2DModel.from_pretrained(tmp_path / "ours").eval()
        assert _rel_err(back(x, t).sample, expected) <= 1e-4


LEGACY_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _to_legacy_keys(state_dict):
    renamed = {}
    for key, value in state_dict.items():
        if ".attentions." in key:
            for new, old in LEGACY_NAMES.items():
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    return renamed


def test_legacy_attention_key_names_load(tmp_path):
    stock, _ = _paired(TINY)
    stock.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    legacy = _to_legacy_keys(load_file(weights))
    assert sum(k.endswith(".query.weight") for k in legacy) == 4  # one down, one middle, two up attentions
    assert not any(".to_q." in k for k in legacy)
    save_file(legacy, weights)

    x, t = _inputs(TINY)
    with torch.no_grad():
        expected = stock(x, t).sample
        from_folder = DDPMUNet2DModel.from_pretrained(tmp_path).eval()
        assert _rel_err(from_folder(x, t).sample, expected) <= 1e-4
        direct = DDPMUNet2DModel(**TINY).eval()
        direct.load_state_dict(legacy, strict=True)
        assert _rel_err(direct(x, t).sample, expected) <= 1e-4


def test_output_dataclass_and_return_dict():
    _, ours = _paired(TINY)
    x, t = _inputs(TINY)
    with torch.no_grad():
        out = ours(x, t)
        tup = ours(x, t, return_dict=False)
    assert isinstance(out, UNet2DOutput)
    assert isinstance(tup, tuple) and len(tup) == 1
    torch.testing.assert_close(out.sample, tup[0], rtol=0, atol=0)


def test_timestep_forms_broadcast_to_the_batch():
    _, ours = _paired(TINY)
    x, _ = _inputs(TINY, batch=3)
    with torch.no_grad():
        per_sample = ours(x, torch.tensor([7, 7, 7])).sample
        for t in (7, torch.tensor(7), torch.tensor([7]), torch.tensor([7.0, 7.0, 7.0])):
            torch.testing.assert_close(ours(x, t).sample, per_sample, rtol=1e-5, atol=1e-6)
        # Each sample sees its own timestep: the batch row equals running that sample alone.
        mixed = ours(x, torch.tensor([1, 500, 999])).sample
        alone = ours(x[1:2], 500).sample
        torch.testing.assert_close(mixed[1:2], alone, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(mixed[0], per_sample[0])


def test_python_float_timestep_is_not_truncated():
    # UNet2DModel turns a Python float into a long tensor; ours keeps the fraction, like a float tensor does.
    _, ours = _paired(TINY)
    x, _ = _inputs(TINY, batch=2)
    with torch.no_grad():
        fractional = ours(x, 10.5).sample
        torch.testing.assert_close(fractional, ours(x, torch.tensor(10.5)).sample, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(fractional, ours(x, 10).sample)


def test_timestep_embedding_is_the_papers_sinusoid():
    # Transformer positional encoding, as in the original DDPM code: sin first, ω_k = 10000^(-k / (d/2 - 1)).
    from hf_ddpm.models.blocks import timestep_embedding

    t = torch.tensor([0.0, 1.0, 999.0])
    dim = 6
    emb = timestep_embedding(t, dim, flip_sin_to_cos=False, freq_shift=1)
    omega = torch.tensor([10000.0 ** (-k / (dim / 2 - 1)) for k in range(dim // 2)])
    expected = torch.cat([torch.sin(t[:, None] * omega), torch.cos(t[:, None] * omega)], dim=1)
    torch.testing.assert_close(emb, expected)
    flipped = timestep_embedding(t, dim + 1, flip_sin_to_cos=True, freq_shift=1)
    torch.testing.assert_close(flipped[:, :dim], torch.cat([expected[:, 3:], expected[:, :3]], dim=1))
    assert torch.all(flipped[:, dim] == 0)  # odd sizes are zero-padded


def test_channels_last_gives_same_output():
    _, ours = _paired(TINY)
    x, t = _inputs(TINY)
    with torch.no_grad():
        expected = ours(x, t).sample
        ours.to(memory_format=torch.channels_last)
        got = ours(x.to(memory_format=torch.channels_last), t).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_under_autocast_close_to_float32(dtype):
    stock, ours = _paired(TINY)
    x, t = _inputs(TINY)
    with torch.no_grad():
        expected = ours(x, t).sample
        with torch.autocast("cpu", dtype=dtype):
            got = ours(x, t).sample
            stock_got = stock(x, t).sample
    assert got.dtype == dtype
    assert torch.isfinite(got).all()
    # Half precision carries ~3 significant digits; the error must be of that order, and no worse than stock's.
    assert _rel_err(got, expected) < 3e-2
    assert _rel_err(got, expected) <= 2 * _rel_err(stock_got, expected) + 1e-3


def test_half_precision_weights_run():
    _, ours = _paired(TINY)
    x, t = _inputs(TINY)
    with torch.no_grad():
        expected = ours(x, t).sample
        ours.to(torch.bfloat16)
        got = ours(x.to(torch.bfloat16), t).sample
    assert got.dtype == torch.bfloat16
    assert _rel_err(got, expected) < 3e-2


def _loss_and_grads(model, x, t, call=None):
    """Output and parameter gradients of a squared-output loss; `call` runs the forward (e.g. a compiled model)."""
    torch.manual_seed(123)  # same dropout masks in both runs
    model.zero_grad()
    out = (model if call is None else call)(x, t).sample
    out.square().mean().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _saved_activation_bytes(model, x, t):
    """Bytes of the distinct tensors autograd keeps for backward (what gradient checkpointing saves)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, t).sample.sum().backward()
    return sum(storages.values())


def test_gradient_checkpointing_same_gradients_less_memory():
    _, ours = _paired({**TINY, "dropout": 0.1})
    ours.train()
    x, t = _inputs(TINY, batch=2)
    plain_out, plain_grads = _loss_and_grads(ours, x, t)
    plain_bytes = _saved_activation_bytes(ours, x, t)

    ours.enable_gradient_checkpointing()
    assert ours.is_gradient_checkpointing
    ckpt_out, ckpt_grads = _loss_and_grads(ours, x, t)
    ckpt_bytes = _saved_activation_bytes(ours, x, t)

    torch.testing.assert_close(ckpt_out, plain_out, rtol=0, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert ckpt_bytes < 0.6 * plain_bytes, (ckpt_bytes, plain_bytes)

    ours.disable_gradient_checkpointing()
    assert not ours.is_gradient_checkpointing


@pytest.mark.slow
def test_torch_compile_same_outputs_and_gradients_with_checkpointing():
    _, ours = _paired(TINY)
    x, t = _inputs(TINY)
    with torch.no_grad():
        expected = ours(x, t).sample
        compiled = torch.compile(ours)
        torch.testing.assert_close(compiled(x, t).sample, expected, rtol=1e-4, atol=1e-5)

    ours.train()
    eager_out, eager_grads = _loss_and_grads(ours, x, t)
    ours.enable_gradient_checkpointing()
    compiled_out, compiled_grads = _loss_and_grads(ours, x, t, call=torch.compile(ours))
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
