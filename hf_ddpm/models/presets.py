"""Named configurations of `DDPMUNet2DModel`: the paper's networks and small models that train on a CPU.

Parameter counts and multiply-accumulates per forward (batch 1, at `sample_size`; convolutions, linear layers and
attention products, counted by `torch.utils.flop_counter.FlopCounterMode`) are pinned by
`tests/models/test_presets.py`.
"""

from __future__ import annotations

from typing import Any

# The conventions of the original TensorFlow DDPM code, which the google/ddpm-* checkpoints keep:
# sin-first embedding with frequencies 10000^(-k / (d/2 - 1)), TF "SAME" stride-2 padding, GroupNorm eps 1e-6,
# and one attention head of all channels.
_DDPM_CONVENTIONS: dict[str, Any] = {
    "time_embedding_type": "positional",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "downsample_padding": 0,
    "norm_eps": 1e-6,
    "attention_head_dim": None,
    "act_fn": "silu",
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    # DDPM Appendix B, CIFAR10 32x32: 128·(1, 2, 2, 2), two blocks per resolution, attention at 16x16, dropout 0.1;
    # the layout of google/ddpm-cifar10-32 (35,746,307 parameters).
    "ddpm-cifar10": {
        **_DDPM_CONVENTIONS,
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 256, 256, 256),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "dropout": 0.1,
    },
    # DDPM Appendix B, 256x256 (LSUN, CelebA-HQ): 128·(1, 1, 2, 2, 4, 4), attention at 16x16;
    # the layout of google/ddpm-church-256 / -bedroom-256 / -cat-256 / -celebahq-256 (113,673,219 parameters).
    "ddpm-256": {
        **_DDPM_CONVENTIONS,
        "sample_size": 256,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "down_block_types": (
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "dropout": 0.0,
    },
    # Small CPU models for the demo (MNIST / sklearn digits, grayscale): channels 32/64/64, one block per
    # resolution, attention at the middle resolution, about 1M parameters; the README's main job trains this one.
    "digits-16": {
        **_DDPM_CONVENTIONS,
        "sample_size": 16,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        # No dropout: the demo trains for minutes, far from the overfitting that the paper's 0.1 guards against.
        "dropout": 0.0,
    },
    # For tests: every block kind (attention down, middle and up; two heads) in a few 10k parameters.
    "tiny": {
        **_DDPM_CONVENTIONS,
        "sample_size": 8,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (8, 16),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "attention_head_dim": 8,
        "dropout": 0.0,
    },
}

# The same network on digits padded or resized to 32x32.
PRESETS["digits-32"] = {**PRESETS["digits-16"], "sample_size": 32}
