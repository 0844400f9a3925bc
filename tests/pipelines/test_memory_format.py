"""DDPMPipeline's memory layout: NHWC on the CPU by default, the same numbers as NCHW, and a way to choose."""

import argparse
from unittest import mock

import pytest
import torch
from example_scripts import load_example

from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline

# invert warns (rightly) that these clipping schedulers would not decode its latents back; not what these tests pin.
pytestmark = pytest.mark.filterwarnings("ignore:The pipeline's scheduler has clip_sample=True:UserWarning")

# Largest |NHWC − NCHW| measured on these tiny pipelines (float rounding of oneDNN's two convolution orders): 2.4e-7
# for 10 DDPM or DDIM (η = 1) steps, 6e-7 for 10 encoding steps; 1.6e-6 / 3.2e-6 with T = 1000.
LAYOUT_ATOL = 1e-5


def conv_weights(unet: torch.nn.Module) -> list[torch.Tensor]:
    """The 4-D weights whose layout is observable (a 1×1 kernel or one input channel is both NCHW and NHWC)."""
    return [
        p
        for p in unet.parameters()
        if p.ndim == 4 and p.is_contiguous() != p.is_contiguous(memory_format=torch.channels_last)
    ]


def record_latent_layouts(layouts: list[bool]):
    def record(pipe, i, t, callback_kwargs):
        layouts.append(callback_kwargs["latents"].is_contiguous(memory_format=torch.channels_last))
        return callback_kwargs

    return record


def test_a_cpu_call_converts_the_unet_to_channels_last_in_place_and_keeps_the_chain_in_nhwc(ddim_pipe, images_of):
    assert ddim_pipe.memory_format == torch.contiguous_format  # as built: nothing converts before the first call
    weights_before = list(ddim_pipe.unet.parameters())
    layouts = []
    images_of(ddim_pipe, num_inference_steps=4, callback_on_step_end=record_latent_layouts(layouts))
    assert ddim_pipe.memory_format == torch.channels_last
    assert conv_weights(ddim_pipe.unet) and all(
        w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(ddim_pipe.unet)
    )
    assert layouts == [True] * 4
    # In place: the same Parameter objects, so an optimizer or a hook holding them still sees the UNet's weights.
    assert all(a is b for a, b in zip(weights_before, ddim_pipe.unet.parameters(), strict=True))


def test_the_unet_is_converted_once_not_at_every_call(ddim_pipe, images_of):
    with mock.patch.object(ddim_pipe.unet, "to", wraps=ddim_pipe.unet.to) as to:
        for _ in range(3):
            images_of(ddim_pipe, num_inference_steps=2)
        ddim_pipe.invert(torch.rand(2, 3, 8, 8), num_inference_steps=2)
    assert to.call_args_list == [mock.call(memory_format=torch.channels_last)]


def test_default_layout_samples_and_encodes_the_same_numbers_as_nchw(ddim_pipe, images_of, ddpm_pipe):
    # Oracle: the same pipeline with the default turned off (NCHW); only float rounding may differ.
    for pipe, options in ((ddim_pipe, {"eta": 1.0}), (ddpm_pipe, {})):
        pipe.set_memory_format(torch.contiguous_format)
        nchw = images_of(pipe, seed=2, batch_size=4, **options)
        nchw_latents = pipe.invert(nchw, num_inference_steps=5)
        assert pipe.memory_format == torch.contiguous_format and nchw_latents.is_contiguous()

        pipe.set_memory_format(None)
        nhwc = images_of(pipe, seed=2, batch_size=4, **options)
        nhwc_latents = pipe.invert(nchw, num_inference_steps=5)
        assert pipe.memory_format == torch.channels_last
        assert nhwc_latents.is_contiguous(memory_format=torch.channels_last)
        assert nchw.std() > 0.05  # not a vacuous match
        torch.testing.assert_close(nhwc, nchw, atol=LAYOUT_ATOL, rtol=0)
        torch.testing.assert_close(nhwc_latents, nchw_latents, atol=LAYOUT_ATOL, rtol=0)


def test_set_memory_format_contiguous_opts_out_and_converts_an_nhwc_unet_back(ddim_pipe, images_of):
    ddim_pipe.unet.to(memory_format=torch.channels_last)
    ddim_pipe.set_memory_format(torch.contiguous_format)
    assert ddim_pipe.memory_format == torch.contiguous_format  # converted at once, not only at the next call
    layouts = []
    images_of(ddim_pipe, num_inference_steps=3, callback_on_step_end=record_latent_layouts(layouts))
    assert ddim_pipe.memory_format == torch.contiguous_format
    assert all(w.is_contiguous() for w in conv_weights(ddim_pipe.unet))
    assert layouts == [False] * 3


def test_a_replaced_unet_is_converted_at_the_next_call(ddim_pipe, images_of):
    images_of(ddim_pipe, num_inference_steps=2)
    ddim_pipe.unet = type(ddim_pipe.unet).from_config(ddim_pipe.unet.config).eval()
    assert ddim_pipe.memory_format == torch.contiguous_format
    images_of(ddim_pipe, num_inference_steps=2)
    assert ddim_pipe.memory_format == torch.channels_last


def test_off_the_cpu_the_default_leaves_the_unets_layout_and_undoes_its_own_cpu_conversion(
    ddim_pipe, images_of, monkeypatch
):
    # No GPU here: the device the pipeline would run on is faked; the layout rule is all this looks at.
    images_of(ddim_pipe, num_inference_steps=2)  # the CPU default converts to NHWC
    monkeypatch.setattr(DDPMPipeline, "_execution_device", property(lambda self: torch.device("cuda")))
    assert ddim_pipe._prepare_memory_format() == torch.contiguous_format  # the UNet's own layout, given back
    ddim_pipe.unet.to(memory_format=torch.channels_last)  # a layout the user chose is left alone
    assert ddim_pipe._prepare_memory_format() == torch.channels_last
    ddim_pipe.set_memory_format(torch.contiguous_format)  # an explicit choice holds on every device
    assert ddim_pipe._prepare_memory_format() == torch.contiguous_format


def test_set_memory_format_channels_last_converts_at_once_and_holds_off_the_cpu(ddim_pipe, monkeypatch):
    ddim_pipe.set_memory_format(torch.channels_last)
    assert ddim_pipe.memory_format == torch.channels_last
    monkeypatch.setattr(DDPMPipeline, "_execution_device", property(lambda self: torch.device("cuda")))
    assert ddim_pipe._prepare_memory_format() == torch.channels_last


@pytest.mark.parametrize("bad", [torch.preserve_format, "channels_last", torch.channels_last_3d])
def test_set_memory_format_rejects_other_layouts_naming_the_argument(ddim_pipe, bad):
    with pytest.raises(
        ValueError, match=r"memory_format must be torch\.channels_last, torch\.contiguous_format or None"
    ):
        ddim_pipe.set_memory_format(bad)


@pytest.mark.parametrize(
    ("flags", "expected"), [([], torch.channels_last), (["--no-channels_last"], torch.contiguous_format)]
)
def test_example_scripts_channels_last_flag_keeps_nhwc_or_turns_it_off(ddim_pipe, images_of, flags, expected):
    runtime_flags = load_example("runtime_flags")
    parser = argparse.ArgumentParser()
    runtime_flags.add_runtime_arguments(parser)
    runtime_flags.prepare_pipeline(ddim_pipe, parser.parse_args(["--device", "cpu", *flags]))
    images_of(ddim_pipe, num_inference_steps=2)
    assert ddim_pipe.memory_format == expected
