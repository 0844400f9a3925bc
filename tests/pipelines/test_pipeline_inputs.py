"""Bad input to DDPMPipeline is refused at the call, before any work: one table of (input, exception, message words).

Each case runs on a fresh pipeline with a hook on the UNet and a copy of the scheduler's timesteps, and passes only if
the call raised the expected exception, its message holds every listed word, no UNet forward ran and the scheduler
still has the schedule it had before. To add a case, add a `case(...)` line.
"""

import pytest
import torch
from diffusers.callbacks import SDCFGCutoffCallback

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler

X = torch.zeros(2, 3, 8, 8)  # a well-formed batch of 2 latents or images for the 8×8×3 test UNet


def x_with(value, index):
    x = X.clone()
    x[index] = value
    return x


WITH_NAN = x_with(float("nan"), (..., 5))  # one column of every channel: 2·3·8 = 48 values
WITH_INF = x_with(float("inf"), (1, 2, 3, 4))  # one value


def case(name, kwargs, error, *words, pipeline="ddim", method="__call__"):
    """One row: call `pipeline`'s `method` with `kwargs`; expect `error` with every one of `words` in its message.

    `pipeline` names a `<pipeline>_pipe` fixture: "ddim" / "ddpm" (tiny UNet, T = 10), "no_unet" / "no_scheduler"
    (built with that component None), "cond" (the tiny UNet with 3 classes and the null label, DDIM, id2label).
    """
    return pytest.param(pipeline, method, kwargs, error, words, id=name)


def scale_case(name, guidance_scale, error, *words):
    """A row for `guidance_scale` alone: the class-conditional pipeline, a valid label."""
    kwargs = {"class_labels": 0, "guidance_scale": guidance_scale}
    return case(name, kwargs, error, "guidance_scale", *words, pipeline="cond")


CASES = [
    # batch_size: an int >= 1
    case("batch_size=0", {"batch_size": 0}, ValueError, "batch_size", ">= 1", "got 0"),
    case("batch_size=-1", {"batch_size": -1}, ValueError, "batch_size", "got -1"),
    case("batch_size=1.5", {"batch_size": 1.5}, ValueError, "batch_size", "integer", "got 1.5"),
    case("batch_size=True", {"batch_size": True}, ValueError, "batch_size", "got True"),
    case("batch_size='2'", {"batch_size": "2"}, ValueError, "batch_size", "got '2'"),
    # num_inference_steps: the scheduler's set_timesteps owns its range
    case("steps=0", {"num_inference_steps": 0}, ValueError, "num_inference_steps", "[1, 10]", pipeline="ddpm"),
    case("steps=T+1", {"num_inference_steps": 11}, ValueError, "num_inference_steps", "[1, 10]", pipeline="ddpm"),
    case("steps=2.0", {"num_inference_steps": 2.0}, ValueError, "num_inference_steps", "[1, 10]", pipeline="ddpm"),
    # output_type
    case("output_type", {"output_type": "jpeg"}, ValueError, "output_type", "'pil', 'np', 'pt', 'latent'", "'jpeg'"),
    # latents: a finite tensor of shape (batch_size, C, H, W), the UNet's dtype, the pipeline's device
    case(
        "latents_batch",
        {"batch_size": 2, "latents": X[:1]},
        ValueError,
        "latents",
        "shape (2, 3, 8, 8)",
        "(1, 3, 8, 8)",
    ),
    case("latents_channels", {"batch_size": 2, "latents": X[:, :1]}, ValueError, "shape (2, 3, 8, 8)", "(2, 1, 8, 8)"),
    case(
        "latents_dtype", {"batch_size": 2, "latents": X.double()}, ValueError, "latents", "dtype", "float32", "float64"
    ),
    case("latents_device", {"batch_size": 2, "latents": X.to("meta")}, ValueError, "latents", "device", "meta"),
    case("latents_numpy", {"batch_size": 2, "latents": X.numpy()}, ValueError, "latents", "torch.Tensor", "ndarray"),
    case("latents_nan", {"batch_size": 2, "latents": WITH_NAN}, ValueError, "latents", "finite", "48 NaN or inf"),
    case("latents_inf", {"batch_size": 2, "latents": WITH_INF}, ValueError, "latents", "finite", "1 NaN or inf"),
    # generator: one per sample when a list
    case("generator_list", {"batch_size": 3, "generator": [torch.Generator()] * 2}, ValueError, "generator", "2"),
    # sampler options the scheduler's step cannot take
    case("eta_for_ddpm", {"eta": 0.5}, ValueError, "eta=0.5", "DDPMScheduler.step", pipeline="ddpm"),
    case("sigma_hat_for_ddpm", {"sigma_hat": True}, ValueError, "sigma_hat", "DDPMScheduler", pipeline="ddpm"),
    case(
        "clipped_output_for_ddpm",
        {"use_clipped_model_output": True},
        ValueError,
        "use_clipped_model_output=True",
        "DDPMScheduler.step",
        "None",
        pipeline="ddpm",
    ),
    case(
        "unclipped_output_for_ddpm",
        {"use_clipped_model_output": False},
        ValueError,
        "use_clipped_model_output",
        pipeline="ddpm",
    ),
    # callbacks: tensor names from the pipeline's _callback_tensor_inputs (diffusers' check_inputs)
    case(
        "callback_tensor_name",
        {"callback_on_step_end": lambda *a: {}, "callback_on_step_end_tensor_inputs": ["prompt_embeds"]},
        ValueError,
        "callback_on_step_end_tensor_inputs",
        "['latents', 'class_labels']",
        "prompt_embeds",
    ),
    case(
        "stock_callback_for_another_pipeline",  # Stable Diffusion's CFG cut-off asks for prompt_embeds
        {"callback_on_step_end": SDCFGCutoffCallback(cutoff_step_ratio=0.5)},
        ValueError,
        "callback_on_step_end_tensor_inputs",
        "prompt_embeds",
    ),
    # components
    case("no_unet", {}, ValueError, "no unet", "unet=None", pipeline="no_unet"),
    case("no_scheduler", {}, ValueError, "no scheduler", "scheduler=None", pipeline="no_scheduler"),
    case("no_unet_invert", {"images": X}, ValueError, "no unet", pipeline="no_unet", method="invert"),
    case(
        "no_unet_interpolate",
        {"latents_a": X, "latents_b": X},
        ValueError,
        "no unet",
        pipeline="no_unet",
        method="interpolate",
    ),
    # class_labels: ints in [0, num_classes - 1] (the null label num_classes is guidance's own), one or one per sample
    case("label_negative", {"class_labels": [0, -1]}, ValueError, "class_labels", "[0, 2]", "[-1]", pipeline="cond"),
    case("label_is_null", {"class_labels": [3]}, ValueError, "[0, 2]", "null label", "got [3]", pipeline="cond"),
    case("label_tensor_beyond", {"class_labels": torch.tensor([0, 5])}, ValueError, "got [5]", pipeline="cond"),
    case(
        "labels_count",
        {"class_labels": [0, 1, 2], "batch_size": 2},
        ValueError,
        "class_labels holds 3 labels",
        "batch_size is 2",
        pipeline="cond",
    ),
    case("labels_empty", {"class_labels": []}, ValueError, "class_labels is empty", pipeline="cond"),
    case("label_float", {"class_labels": [1.0]}, TypeError, "class_labels must be ints", "[1.0]", pipeline="cond"),
    case("label_bool", {"class_labels": [True]}, TypeError, "class_labels must be ints", "[True]", pipeline="cond"),
    case("label_name", {"class_labels": ["one"]}, TypeError, "class_labels", "get_label_ids", pipeline="cond"),
    case(
        "label_float_tensor",
        {"class_labels": torch.tensor([1.0])},
        TypeError,
        "class_labels",
        "integer tensor",
        "float32",
        pipeline="cond",
    ),
    case(
        "labels_2d", {"class_labels": torch.zeros(2, 1, dtype=torch.long)}, ValueError, "0-d or 1-d", pipeline="cond"
    ),
    case("labels_unconditional", {"class_labels": [0]}, ValueError, "class_labels", "unconditional"),
    case(
        "invert_labels_count",
        {"images": X, "class_labels": [0, 1, 2], "num_inference_steps": 5},
        ValueError,
        "class_labels holds 3 labels",
        "2 images",
        pipeline="cond",
        method="invert",
    ),
    case(
        "invert_labels_unconditional",
        {"images": X, "class_labels": 0, "num_inference_steps": 5},
        ValueError,
        "unconditional",
        method="invert",
    ),
    # guidance_scale: a finite number >= 0; only 1 (or None) without a class-conditional UNet, 0 or 1 without labels
    scale_case("scale_negative", -1, ValueError, ">= 0", "-1"),
    scale_case("scale_nan", float("nan"), ValueError, "finite", "nan"),
    scale_case("scale_inf", float("inf"), ValueError, "finite", "inf"),
    scale_case("scale_str", "2", TypeError, "real number", "str"),
    scale_case("scale_bool", True, TypeError, "real number", "bool"),
    case("scale_unconditional", {"guidance_scale": 2.0}, ValueError, "guidance_scale=2.0", "unconditional"),
    case("scale_0_unconditional", {"guidance_scale": 0}, ValueError, "guidance_scale=0", "unconditional"),
    case(
        "scale_without_labels", {"guidance_scale": 3}, ValueError, "guidance_scale=3", "class_labels", pipeline="cond"
    ),
    case(
        "invert_scale_negative",
        {"images": X, "class_labels": 0, "guidance_scale": -0.5, "num_inference_steps": 5},
        ValueError,
        "guidance_scale",
        "-0.5",
        pipeline="cond",
        method="invert",
    ),
    # label names: from id2label
    case(
        "unknown_name",
        {"label": ["one", "seven"]},
        ValueError,
        "['seven']",
        "known names",
        "'nought'",
        pipeline="cond",
        method="get_label_ids",
    ),
    case("names_without_id2label", {"label": "one"}, ValueError, "id2label is None", method="get_label_ids"),
]


@pytest.fixture
def no_unet_pipe(quiet):
    return quiet(DDPMPipeline(unet=None, scheduler=DDIMScheduler(num_train_timesteps=10)))


@pytest.fixture
def cond_pipe(quiet):
    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset("tiny", num_class_embeds=4).eval()  # 3 classes and the null label
    id2label = {0: "zero, nought", 1: "one", 2: "two"}
    return quiet(DDPMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=10), id2label=id2label))


@pytest.fixture
def no_scheduler_pipe(tiny_unet, quiet):
    return quiet(DDPMPipeline(unet=tiny_unet(), scheduler=None))


@pytest.mark.parametrize(("pipeline", "method", "kwargs", "error", "words"), CASES)
def test_bad_input_is_refused_before_any_work(request, pipeline, method, kwargs, error, words):
    pipe = request.getfixturevalue(f"{pipeline}_pipe")
    unet_calls = []
    if pipe.unet is not None:
        pipe.unet.register_forward_pre_hook(lambda module, args: unet_calls.append(1))
    timesteps = None
    if pipe.scheduler is not None:
        pipe.scheduler.set_timesteps(3)  # unlike any schedule the call would set
        timesteps = pipe.scheduler.timesteps.clone()

    with pytest.raises(error) as raised:
        getattr(pipe, method)(**kwargs)

    message = str(raised.value)
    missing = [word for word in words if word not in message]
    assert not missing, f"{missing} not in the message: {message}"
    assert unet_calls == [], "the UNet ran before the input was refused"
    if timesteps is not None:
        assert torch.equal(pipe.scheduler.timesteps, timesteps), "the scheduler was set before the input was refused"
