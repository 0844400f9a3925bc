"""`DDPMPipeline.from_pretrained` takes the keywords of diffusers' `DiffusionPipeline.from_pretrained`: each is honoured
or refused with the reason, with diffusers' exception type for the same mistake (stock diffusers is the oracle)."""

import inspect
import re

import diffusers
import pytest
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny pipeline saved once (diffusers' own layout)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("saved")
    DDPMPipeline(
        unet=DDPMUNet2DModel.from_preset("tiny"), scheduler=DDPMScheduler(num_train_timesteps=10)
    ).save_pretrained(path)
    return path


def raised(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def same_error_as_stock(folder, match: str, **kwargs) -> BaseException:
    """Our error for `kwargs`, asserted to be of the type stock diffusers raises for them."""
    theirs = raised(lambda: diffusers.DDPMPipeline.from_pretrained(folder, **kwargs))
    ours = raised(lambda: DDPMPipeline.from_pretrained(folder, **kwargs))
    assert type(ours) is type(theirs), (
        f"ours {type(ours).__name__}: {ours}; diffusers {type(theirs).__name__}: {theirs}"
    )
    assert re.search(match, str(ours)), str(ours)
    return ours


# --------------------------------------------------------------------------------------------------- dtype
@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": torch.float64},
        {"torch_dtype": torch.float64},
        {"dtype": {"unet": torch.float64}},
        {"dtype": {"default": torch.float64}},
    ],
    ids=["dtype", "torch_dtype", "dtype-per-component", "dtype-default"],
)
def test_dtype_and_torch_dtype_load_the_unet_in_that_dtype(folder, kwargs):
    assert DDPMPipeline.from_pretrained(folder, **kwargs).unet.dtype == torch.float64
    assert diffusers.DDPMPipeline.from_pretrained(folder, **kwargs).unet.dtype == torch.float64


def test_dtype_and_torch_dtype_together_are_refused_like_diffusers(folder):
    same_error_as_stock(folder, "both `dtype` and `torch_dtype`", dtype=torch.float16, torch_dtype=torch.float16)


def test_dtype_that_is_not_a_torch_dtype_is_refused(folder):
    # diffusers only logs a warning and loads float32; a silent fallback hides the typo.
    with pytest.raises(ValueError, match="dtype must be a torch.dtype.*'float16'"):
        DDPMPipeline.from_pretrained(folder, dtype="float16")


# ------------------------------------------------------------------------------------------------ device_map
def test_device_map_with_a_device_puts_the_pipeline_there(folder):
    pipe = DDPMPipeline.from_pretrained(folder, device_map="cpu")
    assert pipe.device == torch.device("cpu") and pipe.unet.device == torch.device("cpu")
    assert diffusers.DDPMPipeline.from_pretrained(folder, device_map="cpu").device == torch.device("cpu")


def test_device_map_strategy_is_refused_like_diffusers_refuses_an_unknown_one(folder):
    same_error_as_stock(
        folder, "device_map='auto' is not supported: a DDPMPipeline holds one model", device_map="auto"
    )
    # diffusers splits a multi-model pipeline with "balanced"; one UNet has nothing to balance.
    with pytest.raises(NotImplementedError, match="one device"):
        DDPMPipeline.from_pretrained(folder, device_map="balanced")


def test_device_map_that_is_not_a_string_is_refused_like_diffusers(folder):
    same_error_as_stock(folder, "`device_map` must be a string", device_map={"": "cpu"})


# --------------------------------------------------------------------------------------------------- variant
def test_missing_variant_is_refused_like_diffusers(folder):
    same_error_as_stock(folder, r"You are trying to load the model files of the `variant=fp16`", variant="fp16")


# ------------------------------------------------------------------------------------------------ safetensors
def test_use_safetensors_false_needs_allow_pickle(folder):
    with pytest.raises(ValueError, match="use_safetensors=False.*allow_pickle=True"):
        DDPMPipeline.from_pretrained(folder, use_safetensors=False)
    # Allowed, it means what it means in diffusers: pickle only, which this folder does not have.
    same_error_as_stock(folder, r"diffusion_pytorch_model\.bin", use_safetensors=False, allow_pickle=True)


def test_low_cpu_mem_usage_false_loads_the_same_weights(folder):
    default = DDPMPipeline.from_pretrained(folder).unet.state_dict()
    eager = DDPMPipeline.from_pretrained(folder, low_cpu_mem_usage=False).unet.state_dict()
    assert default.keys() == eager.keys()
    for key in default:
        torch.testing.assert_close(eager[key], default[key], atol=0, rtol=0)


# --------------------------------------------------------------------------------------- refused keywords
@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("custom_pipeline", "my_pipeline", "diffusers.DiffusionPipeline.from_pretrained"),
        ("custom_revision", "v1", "diffusers.DiffusionPipeline.from_pretrained"),
        ("load_connected_pipeline", True, "no connected pipelines"),
        ("proxies", {"https": "http://proxy:3128"}, "HTTPS_PROXY"),
        ("mirror", "https://mirror.example", "HF_ENDPOINT"),
        ("max_memory", {0: "1GB"}, "one device"),
        ("offload_folder", "offload", "one device"),
        ("offload_state_dict", True, "one device"),
        ("use_onnx", True, "ONNX"),
        ("provider", "CPUExecutionProvider", "ONNX"),
        ("sess_options", object(), "ONNX"),
        ("provider_options", {}, "ONNX"),
        ("quantization_config", object(), "quantizing"),
        ("use_flashpack", True, "safetensors"),
        ("output_loading_info", True, "refused with an error"),
        ("dduf_file", "model.dduf", "DDUF"),
    ],
)
def test_keyword_hf_ddpm_cannot_honour_is_refused_with_the_reason(folder, name, value, reason):
    with pytest.raises(ValueError, match=rf"{name}=.* is not supported by hf_ddpm's loader: .*{re.escape(reason)}"):
        DDPMPipeline.from_pretrained(folder, **{name: value})


def test_refusable_keyword_with_its_neutral_value_is_accepted(folder):
    pipe = DDPMPipeline.from_pretrained(
        folder, custom_pipeline=None, load_connected_pipeline=False, use_onnx=False, output_loading_info=False
    )
    assert type(pipe) is DDPMPipeline


def test_every_diffusers_from_pretrained_keyword_is_known(folder):
    source = inspect.getsource(DiffusionPipeline.from_pretrained) + inspect.getsource(DiffusionPipeline.download)
    names = set(re.findall(r'kwargs\.pop\("(\w+)"', source))
    assert {"dtype", "device_map", "variant", "use_safetensors", "custom_pipeline"} <= names  # the scan still works
    for name in sorted(names):
        try:
            DDPMPipeline.from_pretrained(folder, **{name: object()})
        except Exception as err:  # any error but "unknown keyword" is an answer
            assert "unexpected keyword" not in str(err), f"{name}: {err}"


def test_unknown_keyword_is_refused(folder):
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['num_steps'\\]"):
        DDPMPipeline.from_pretrained(folder, num_steps=10)


def test_trust_remote_code_is_accepted_and_runs_nothing(folder):
    assert type(DDPMPipeline.from_pretrained(folder, trust_remote_code=True)) is DDPMPipeline
