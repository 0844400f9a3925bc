"""DDPMPipeline sampling: drop-in equality with stock diffusers, randomness, outputs, callbacks, bad input."""

import io

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

# invert warns (rightly) that these clipping schedulers would not decode its latents back; not what these tests pin.
IGNORE_CLIP_WARNING = pytest.mark.filterwarnings("ignore:The pipeline's scheduler has clip_sample=True:UserWarning")


def stock_images(stock_pipe, seed, **kwargs):
    return stock_pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


@pytest.mark.parametrize("num_inference_steps", [None, 4])
def test_same_images_as_stock_diffusers_ddpm_pipeline(ddpm_pipe, stock_unet_like, quiet, num_inference_steps):
    # Oracle: diffusers.DDPMPipeline with the same weights, the stock scheduler of the same config, same generator.
    T = ddpm_pipe.scheduler.config.num_train_timesteps
    stock = quiet(
        diffusers.DDPMPipeline(
            unet=stock_unet_like(ddpm_pipe.unet),
            scheduler=diffusers.DDPMScheduler.from_config(ddpm_pipe.scheduler.config),
        )
    )
    ours = ddpm_pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=num_inference_steps,
        output_type="np",
    ).images
    theirs = stock_images(stock, 3, batch_size=2, num_inference_steps=num_inference_steps or T)
    assert ours.shape == theirs.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)
    # Not a vacuous match: the images are not constant.
    assert ours.std() > 0.05


def test_same_images_as_stock_diffusers_ddim_pipeline_with_eta(ddim_pipe, stock_unet_like, quiet):
    # "leading" spacing with S dividing T is where stock DDIM is right, so it is an oracle there; η = 1 exercises
    # the per-step noise drawn from the generator.
    stock = quiet(
        diffusers.DDIMPipeline(
            unet=stock_unet_like(ddim_pipe.unet),
            scheduler=diffusers.DDIMScheduler.from_config(ddim_pipe.scheduler.config),
        )
    )
    ours = ddim_pipe(batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=5, eta=1.0)
    theirs = stock_images(stock, 5, batch_size=2, num_inference_steps=5, eta=1.0)
    np.testing.assert_allclose(np.stack([np.asarray(im) for im in ours.images]), (theirs * 255).round(), atol=1)


def test_default_num_inference_steps_is_T_for_ddpm_and_50_for_ddim(gaussian_pipe):
    def steps_taken(scheduler_cls, T):
        steps = []
        pipe = gaussian_pipe(scheduler_cls, num_train_timesteps=T)
        pipe(output_type="pt", callback_on_step_end=lambda p, i, t, kw: steps.append(int(t)) or {})
        return steps

    assert steps_taken(DDPMScheduler, 200) == list(range(199, -1, -1))
    assert len(steps_taken(DDIMScheduler, 200)) == 50
    assert len(steps_taken(DDIMScheduler, 20)) == 20  # never more steps than the chain has


def test_generator_list_gives_each_sample_the_same_image_in_a_batch_of_1_or_8(ddpm_pipe):
    # DDPM draws fresh noise every step, so this pins that both x_T and the per-step noise come from generator[i].
    def generators(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = ddpm_pipe(batch_size=8, generator=generators(range(8)), num_inference_steps=4, output_type="pt").images
    for i in (0, 5):
        alone = ddpm_pipe(batch_size=1, generator=generators([i]), num_inference_steps=4, output_type="pt").images
        torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=0)
    # And the samples differ from each other.
    assert (batch[0] - batch[5]).abs().max() > 0.05


def test_output_types_hold_the_same_images(ddim_pipe, images_of):
    pt = images_of(ddim_pipe, seed=1, num_inference_steps=3, output_type="pt")
    np_images = images_of(ddim_pipe, seed=1, num_inference_steps=3, output_type="np")
    pil = images_of(ddim_pipe, seed=1, num_inference_steps=3, output_type="pil")
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, 8, 8)
    assert 0.0 <= float(pt.min()) and float(pt.max()) <= 1.0
    assert isinstance(np_images, np.ndarray) and np_images.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(np_images, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert isinstance(pil, list) and all(isinstance(im, PIL.Image.Image) and im.size == (8, 8) for im in pil)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil]), (np_images * 255).round().astype(np.uint8))


def test_return_dict_false_returns_a_tuple(ddim_pipe):
    out = ddim_pipe(num_inference_steps=2, output_type="pt", return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, 3, 8, 8)


def test_latents_are_x_T_and_replace_the_generator(ddim_pipe):
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = ddim_pipe(batch_size=2, latents=latents, num_inference_steps=3, output_type="pt").images
    b = ddim_pipe(
        batch_size=2,
        latents=latents,
        generator=torch.Generator().manual_seed(9),
        num_inference_steps=3,
        output_type="pt",
    ).images
    c = ddim_pipe(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="pt"
    ).images
    torch.testing.assert_close(a, b)  # η = 0: x_T fixes the image
    torch.testing.assert_close(a, c)  # and the seeded draw of x_T is that same tensor


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(ddim_pipe):
    calls = []

    def callback(pipe, i, t, callback_kwargs):
        calls.append((i, int(t), callback_kwargs["latents"].shape))
        if i == len(pipe.scheduler.timesteps) - 1:
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}
        return {}

    images = ddim_pipe(num_inference_steps=4, output_type="pt", callback_on_step_end=callback).images
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert [c[1] for c in calls] == ddim_pipe.scheduler.timesteps.tolist()
    # x_0 = 0 in [-1, 1] is mid-grey 0.5 in [0, 1]: the replacement reached the output.
    torch.testing.assert_close(images, torch.full_like(images, 0.5))


class ZeroLatentsAtLastStep(PipelineCallback):
    """A diffusers-style callback that finds the last step as diffusers' own callbacks do: `pipeline.num_timesteps`."""

    tensor_inputs = ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        if step_index == pipeline.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs


@pytest.mark.parametrize(
    ("pipe_name", "num_inference_steps", "num_steps"), [("ddim_pipe", 4, 4), ("ddpm_pipe", None, 10)]
)
def test_num_timesteps_lets_a_diffusers_callback_find_the_last_step(
    request, pipe_name, num_inference_steps, num_steps
):
    pipe = request.getfixturevalue(pipe_name)
    steps = []

    def record(pipeline, step_index, timestep, callback_kwargs):
        steps.append((step_index, pipeline.num_timesteps))
        return callback_kwargs

    callbacks = MultiPipelineCallbacks([ZeroLatentsAtLastStep()])
    images = pipe(num_inference_steps=num_inference_steps, output_type="pt", callback_on_step_end=callbacks).images
    assert pipe.num_timesteps == num_steps
    # x_0 = 0 in [-1, 1] is mid-grey: the callback's replacement came after the last step, not before another one.
    torch.testing.assert_close(images, torch.full_like(images, 0.5))
    pipe(num_inference_steps=num_inference_steps, output_type="pt", callback_on_step_end=record)
    assert steps == [(i, num_steps) for i in range(num_steps)]  # set before the first step


def test_latent_output_is_x0_in_model_space_before_post_processing(ddim_pipe, images_of):
    last_step = {}

    def keep_x(pipe, i, t, callback_kwargs):
        last_step["x"] = callback_kwargs["latents"].clone()
        return {}

    latent = images_of(ddim_pipe, seed=1, num_inference_steps=3, output_type="latent", callback_on_step_end=keep_x)
    pt = images_of(ddim_pipe, seed=1, num_inference_steps=3, output_type="pt")
    assert isinstance(latent, torch.Tensor) and latent.shape == (2, 3, 8, 8) and latent.dtype == ddim_pipe.unet.dtype
    torch.testing.assert_close(latent, last_step["x"], atol=0, rtol=0)  # the last step's x_0 as it is
    torch.testing.assert_close((latent / 2 + 0.5).clamp(0, 1), pt)  # which "pt" maps from [-1, 1] to [0, 1]
    assert float(latent.min()) < 0.0
    as_tuple = ddim_pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(1),
        num_inference_steps=3,
        output_type="latent",
        return_dict=False,
    )
    torch.testing.assert_close(as_tuple[0], latent)


def test_use_clipped_model_output_gives_the_images_of_stock_ddim_pipeline(ddim_pipe, stock_unet_like, quiet):
    # Oracle: diffusers.DDIMPipeline with the same weights, config (clip_sample=True) and seed, for both values.
    stock = quiet(
        diffusers.DDIMPipeline(
            unet=stock_unet_like(ddim_pipe.unet),
            scheduler=diffusers.DDIMScheduler.from_config(ddim_pipe.scheduler.config),
        )
    )
    ours = {}
    for use_clipped_model_output in (True, False):
        kwargs = {"batch_size": 2, "num_inference_steps": 5, "use_clipped_model_output": use_clipped_model_output}
        ours[use_clipped_model_output] = ddim_pipe(
            generator=torch.Generator().manual_seed(5), output_type="np", **kwargs
        ).images
        theirs = stock_images(stock, 5, **kwargs)
        np.testing.assert_allclose(ours[use_clipped_model_output], theirs, atol=2e-5, rtol=0)
    # Not vacuous: x̂_0 was clipped, so re-deriving ε̂ from it changed the images.
    assert np.abs(ours[True] - ours[False]).max() > 1e-2


@pytest.mark.parametrize("returned", [None, [], "latents"])
def test_callback_that_returns_no_dict_is_refused_naming_it_and_the_step(ddim_pipe, returned):
    def forgets_to_return_a_dict(pipe, i, t, callback_kwargs):
        return returned if i == 1 else {}

    with pytest.raises(TypeError) as raised:
        ddim_pipe(num_inference_steps=3, callback_on_step_end=forgets_to_return_a_dict)
    message = str(raised.value)
    for words in ("callback_on_step_end", "forgets_to_return_a_dict", type(returned).__name__, "step 1", "dict"):
        assert words in message, message


def test_progress_bar_follows_set_progress_bar_config(ddim_pipe):
    buffer = io.StringIO()
    ddim_pipe.set_progress_bar_config(disable=False, file=buffer, ascii=True)
    ddim_pipe(num_inference_steps=3, output_type="pt")
    assert "3/3" in buffer.getvalue()


def test_sigma_hat_reaches_the_ddim_step(ddim_pipe):
    # Oracle: the same loop run by hand with the scheduler's own σ̂ step.
    generator = torch.Generator().manual_seed(4)
    ours = ddim_pipe(generator=generator, num_inference_steps=3, sigma_hat=True, output_type="pt").images

    generator = torch.Generator().manual_seed(4)
    scheduler = DDIMScheduler.from_config(ddim_pipe.scheduler.config)
    scheduler.set_timesteps(3)
    x = torch.randn(1, 3, 8, 8, generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(ddim_pipe.unet(x, t).sample, t, x, generator=generator, sigma_hat=True).prev_sample
    torch.testing.assert_close(ours, (x / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)
    plain = ddim_pipe(generator=torch.Generator().manual_seed(4), num_inference_steps=3, eta=1.0, output_type="pt")
    assert (plain.images - ours).abs().max() > 1e-3


@IGNORE_CLIP_WARNING
def test_ddim_samples_and_inverts_a_learned_variance_unet_from_its_prediction_half(quiet):
    # A learned-variance UNet returns 2C channels; DDIM has no use for the variance half. Oracle: the DDIM loop run by
    # hand on the first C channels. Its DDPM counterpart with variance_type="learned_range" does use the second half.
    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset("tiny", out_channels=6).eval()
    learned_config = DDPMScheduler(num_train_timesteps=10, variance_type="learned_range").config
    scheduler = DDIMScheduler.from_config(learned_config)
    pipe = quiet(DDPMPipeline(unet=unet, scheduler=scheduler))
    ours = pipe(generator=torch.Generator().manual_seed(1), num_inference_steps=3, output_type="pt").images

    scheduler.set_timesteps(3)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample[:, :3], t, x).prev_sample
    torch.testing.assert_close(ours, (x / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)
    assert pipe.invert(ours, num_inference_steps=3).shape == (1, 3, 8, 8)

    learned = quiet(DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(learned_config)))
    assert learned(generator=torch.Generator().manual_seed(1), output_type="pt").images.shape == (1, 3, 8, 8)


# ----------------------------------------------------------------------------------------------------- bad input
# The call's own checks are one table in test_pipeline_inputs.py; here, what the scheduler's step refuses.
@pytest.mark.parametrize("eta", [-0.5, float("nan")])
def test_eta_outside_the_ddim_range_is_refused_by_the_scheduler_step(ddim_pipe, eta):
    # The pipeline hands eta to DDIMScheduler.step, which owns its range (eta >= 0, finite).
    with pytest.raises(ValueError, match="eta"):
        ddim_pipe(eta=eta, num_inference_steps=2)


def test_works_with_another_diffusers_scheduler_of_the_same_step_api(tiny_unet, quiet):
    # Any scheduler with diffusers' step API: e.g. Euler, whose x_T is scaled by init_noise_sigma and whose model
    # input is scaled by scale_model_input. Oracle: the hand-written loop of the diffusers docs.
    unet = tiny_unet()
    scheduler = diffusers.EulerDiscreteScheduler(num_train_timesteps=10)
    pipe = quiet(DDPMPipeline(unet=unet, scheduler=scheduler))
    ours = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="pt").images

    generator = torch.Generator().manual_seed(0)
    ref = diffusers.EulerDiscreteScheduler(num_train_timesteps=10)
    x = torch.randn(1, 3, 8, 8, generator=generator)
    ref.set_timesteps(3)
    x = x * ref.init_noise_sigma
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(unet(ref.scale_model_input(x, t), t).sample, t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, (x / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)


@IGNORE_CLIP_WARNING
def test_bfloat16_pipeline_samples_and_inverts_in_its_dtype(ddim_pipe):
    ddim_pipe.unet.to(torch.bfloat16)
    latents = ddim_pipe.invert(torch.rand(2, 3, 8, 8), num_inference_steps=3)
    assert latents.dtype == torch.bfloat16
    images = ddim_pipe(batch_size=2, latents=latents, num_inference_steps=3, output_type="np").images
    assert images.dtype == np.float32 and images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    with pytest.raises(ValueError, match="dtype"):
        ddim_pipe(batch_size=2, latents=latents.float())
