"""Classifier-free guidance (Ho & Salimans 2022) in DDPMPipeline, proved on data whose guided ε is known exactly.

A Gaussian mixture whose component k is class k has the exact class-conditional predictor ε(x_t, k) (component k's
noise) and unconditional one ε(x_t, ∅) (the mixture's). DDIM (η = 0) with them must draw each class at s = 1, the
mixture at s = 0, and at s > 1 samples narrower than the class; how much narrower, and how far that is from the tilted
density p(x | c)^s p(x)^(1 − s), is measured here and pinned.
"""

import inspect
import json
import math

import diffusers
import numpy as np
import pytest
import torch
from closed_form import ClassConditionalMixtureEpsModel, GaussianMixture, ddim_gaussian_std

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

MIXTURE = GaussianMixture(weights=(0.5, 0.3, 0.2), means=(-0.8, 0.0, 0.8), stds=(0.2, 0.25, 0.15))
K = len(MIXTURE.weights)
PER_CLASS = 4  # images of 32×32 per class: 4096 independent 1-d draws (the model acts on each element alone)
STEPS = 50
SCALES = (0.0, 1.0, 2.0, 3.0, 5.0)


def standard_normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def mixture_x0(s: float, clip_sample: bool, **call_kwargs) -> torch.Tensor:
    """x_0 of 50 DDIM (η = 0) steps at guidance scale s with the mixture's exact ε, seed 0: rows k·PER_CLASS ... of
    class k."""
    scheduler = DDIMScheduler(clip_sample=clip_sample)
    model = ClassConditionalMixtureEpsModel(
        scheduler.alphas_cumprod.tolist(), MIXTURE.weights, MIXTURE.means, MIXTURE.stds, sample_size=32
    )
    pipe = DDPMPipeline(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(K).repeat_interleave(PER_CLASS)
    generator = torch.Generator().manual_seed(0)
    out = pipe(
        class_labels=labels,
        guidance_scale=s,
        num_inference_steps=STEPS,
        output_type="latent",
        generator=generator,
        **call_kwargs,
    )
    return out.images.double()


@pytest.fixture(scope="module")
def mixture_samples() -> dict[float, torch.Tensor]:
    """x_0 for each guidance scale s, x̂_0 not clipped, all from the same x_T."""
    return {s: mixture_x0(s, clip_sample=False) for s in SCALES}


def class_draws(samples: torch.Tensor, k: int) -> np.ndarray:
    return samples[k * PER_CLASS : (k + 1) * PER_CLASS].flatten().numpy()


def tilted_density(s: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """p(x | k)^s p(x)^(1 − s), normalized on a fine grid: (grid, probabilities)."""
    grid = np.linspace(-3.0, 3.0, 60001)
    log_normal = [
        np.log(w) - 0.5 * ((grid - m) / sd) ** 2 - np.log(sd) for w, m, sd in zip(*MIXTURE.__dict__.values())
    ]
    log_p = np.logaddexp.reduce(log_normal, axis=0)
    log_pk = log_normal[k] - np.log(MIXTURE.weights[k])
    log_tilted = s * log_pk + (1 - s) * log_p
    p = np.exp(log_tilted - log_tilted.max())
    return grid, p / p.sum()


def test_scale_1_draws_each_class_from_its_component(mixture_samples):
    # With component k's exact ε every DDIM step is affine in x_t, so x_0 is exactly Gaussian: mean μ_k, and the std
    # the discrete chain ends with (ddim_gaussian_std: 12-15% below s_k at 50 steps, 3-4% at 200).
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(STEPS)
    n = PER_CLASS * 32 * 32
    for k in range(K):
        draws = class_draws(mixture_samples[1.0], k)
        expected_std = ddim_gaussian_std(scheduler, MIXTURE.stds[k])
        # 4 standard errors; measured within 0.0035 (mean) and 1% (std).
        assert abs(draws.mean() - MIXTURE.means[k]) < 4 * expected_std / math.sqrt(n)
        assert abs(draws.std() / expected_std - 1) < 4 / math.sqrt(2 * n)


def test_scale_0_draws_the_mixture_whatever_the_labels(mixture_samples):
    draws = mixture_samples[0.0].flatten().numpy()
    means = np.array(MIXTURE.means)
    nearest = np.abs(draws[:, None] - means[None]).argmin(axis=1)
    shares = np.bincount(nearest, minlength=K) / draws.size
    # Under the mixture, the share nearest mean k is Σ_j w_j P_j(cell k), the cells split at the midpoints.
    edges = [-math.inf, *((means[:-1] + means[1:]) / 2), math.inf]
    expected = [
        sum(
            w * (standard_normal_cdf((hi - m) / sd) - standard_normal_cdf((lo - m) / sd))
            for w, m, sd in zip(MIXTURE.weights, MIXTURE.means, MIXTURE.stds)
        )
        for lo, hi in zip(edges[:-1], edges[1:])
    ]
    # Measured 0.012 at most (4 binomial standard errors: 0.018); class-conditional draws would be off by 0.13.
    np.testing.assert_allclose(shares, expected, atol=0.02, rtol=0)
    w, m, sd = (np.array(v) for v in (MIXTURE.weights, MIXTURE.means, MIXTURE.stds))
    mixture_std = math.sqrt((w * (sd**2 + m**2)).sum() - (w * m).sum() ** 2)  # 0.659
    # Measured 0.636: the 50-step chain narrows each mode, as at s = 1.
    assert 0.95 < draws.std() / mixture_std < 1.0


# Std of class k's draws over s_k, 50 DDIM steps, seed 0 (the s = 1 column is the discrete chain's own narrowing, see
# above), and the std of the tilted density p(x | k)^s p(x)^(1 − s) over s_k. CFG narrows each class far more than
# the tilt: the middle class, pressed from both sides, collapses (0.066 at s = 3). At 200 steps, s = 2 gives 0.670,
# 0.323, 0.613 (s = 1: 0.961, 0.984, 0.963): the gap to the tilt is not a discretization effect.
#          s = 1    2      3      5          tilted: 2      3      5
#   k = 0  0.875  0.598  0.518  0.449                0.936  0.909  0.878
#   k = 1  0.912  0.264  0.066  0.0016               0.827  0.773  0.720
#   k = 2  0.851  0.527  0.456  0.402                0.938  0.911  0.881
MEASURED_STD_RATIO = {
    1.0: (0.875, 0.912, 0.851),
    2.0: (0.598, 0.264, 0.527),
    3.0: (0.518, 0.066, 0.456),
    5.0: (0.449, 0.0016, 0.402),
}
# Distance to the tilted density: |std_cfg − std_tilted| / std_tilted, and the 1-d Wasserstein distance between the
# draws' and the tilted density's quantiles. At s = 1 the tilt is component k itself (only the chain's narrowing).
#          s = 1           2              3              5
#   k = 0  0.12 / 0.021    0.36 / 0.11    0.43 / 0.17    0.49 / 0.27
#   k = 1  0.09 / 0.017    0.68 / 0.12    0.91 / 0.15    1.00 / 0.15
#   k = 2  0.15 / 0.018    0.44 / 0.13    0.50 / 0.21    0.54 / 0.32
MEASURED_TILT_DISTANCE = {
    1.0: ((0.125, 0.021), (0.088, 0.017), (0.149, 0.018)),
    2.0: ((0.361, 0.109), (0.681, 0.123), (0.438, 0.134)),
    3.0: ((0.430, 0.174), (0.914, 0.151), (0.499, 0.210)),
    5.0: ((0.489, 0.269), (0.998, 0.151), (0.544, 0.317)),
}


def tilted_distance(draws: np.ndarray, s: float, k: int) -> tuple[float, float]:
    grid, p = tilted_density(s, k)
    mean = (p * grid).sum()
    std = math.sqrt((p * (grid - mean) ** 2).sum())
    quantiles = np.interp((np.arange(draws.size) + 0.5) / draws.size, np.cumsum(p), grid)
    return abs(draws.std() - std) / std, float(np.abs(np.sort(draws) - quantiles).mean())


def test_guidance_narrows_each_class_more_than_the_tilted_density(mixture_samples):
    for k in range(K):
        ratios = [class_draws(mixture_samples[s], k).std() / MIXTURE.stds[k] for s in MEASURED_STD_RATIO]
        assert all(a > b for a, b in zip(ratios, ratios[1:])), f"class {k}: std not falling with s: {ratios}"
        # Sampling error of a std over 4096 draws: 1.1%; 5% relative (0.005 absolute for the collapsed class).
        expected = [MEASURED_STD_RATIO[s][k] for s in MEASURED_STD_RATIO]
        assert ratios == pytest.approx(expected, rel=0.05, abs=0.005)
        for s in MEASURED_STD_RATIO:
            std_distance, w1 = tilted_distance(class_draws(mixture_samples[s], k), s, k)
            expected_std_distance, expected_w1 = MEASURED_TILT_DISTANCE[s][k]
            assert std_distance == pytest.approx(expected_std_distance, rel=0.1, abs=0.01)
            assert w1 == pytest.approx(expected_w1, rel=0.1, abs=0.005)


def clipped_ddim_class_means(s: float, **call_kwargs) -> list[float]:
    """Mean of each class's draws from DDIM that clips x̂_0, diffusers' default config."""
    x0 = mixture_x0(s, clip_sample=True, **call_kwargs)
    return [float(class_draws(x0, k).mean()) for k in range(K)]


@pytest.mark.parametrize("s", [2.0, 3.0, 5.0])
def test_guided_ddim_that_clips_re_derives_eps_so_each_class_stays_at_its_component(s):
    # Measured, default (ε̃ re-derived from the clipped x̂_0): class means −0.87/0.06/0.87 (s = 2) to −0.90/0.05/0.89
    # (s = 5), the unclipped chain's clamped into [−1, 1]. Keeping the unclipped ε̃ in the direction term instead
    # (diffusers' DDIM default) adds the overshoot back each step: the outer classes land on the opposite side
    # (s = 2: +0.07 and −0.66; s ≥ 3: +1.00 and −1.00).
    means = clipped_ddim_class_means(s)
    for k in range(K):
        assert abs(means[k] - MIXTURE.means[k]) < 0.15, f"class {k}: mean {means[k]:.3f}, component {MIXTURE.means[k]}"
    flipped = clipped_ddim_class_means(s, use_clipped_model_output=False)
    assert flipped[0] > 0 and flipped[2] < 0, f"the explicit False no longer reaches diffusers' behaviour: {flipped}"


# ------------------------------------------------------------------------------ the guided loop, on a real UNet
NUM_CLASSES = 3
NULL = NUM_CLASSES
ID2LABEL = {0: "zero, nought", 1: "one", 2: "two"}


def conditional_unet(seed: int = 0, **overrides) -> DDPMUNet2DModel:
    torch.manual_seed(seed)
    unet = DDPMUNet2DModel.from_preset("tiny", num_class_embeds=NUM_CLASSES + 1, **overrides)
    with torch.no_grad():  # weights far from init, so that every label's embedding changes the output
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def conditional_pipe(scheduler, unet=None) -> DDPMPipeline:
    pipe = DDPMPipeline(unet if unet is not None else conditional_unet(), scheduler, id2label=ID2LABEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_sample(unet, scheduler, latents, labels_per_step, s, steps, generator=None, **step_kwargs):
    """The guided loop written out as DiT's paper states it: two UNet calls per step, ε̃ = ε_∅ + s (ε_c − ε_∅)."""
    scheduler.set_timesteps(steps)
    x = latents * scheduler.init_noise_sigma
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator
    with torch.no_grad():
        for t, labels in zip(scheduler.timesteps, labels_per_step):
            model_input = scheduler.scale_model_input(x, t)
            eps_c = unet(model_input, t, class_labels=labels).sample
            eps_null = unet(model_input, t, class_labels=torch.full_like(labels, NULL)).sample
            x = scheduler.step(eps_null + s * (eps_c - eps_null), t, x, **step_kwargs).prev_sample
    return x


SCHEDULERS = {
    "ddpm": (lambda: DDPMScheduler(num_train_timesteps=10), 10, {}),
    "ddim_eta": (lambda: DDIMScheduler(num_train_timesteps=10), 4, {"eta": 0.5}),
    "ddim_sigma_hat": (lambda: DDIMScheduler(num_train_timesteps=10), 4, {"sigma_hat": True}),
    "dpm_solver++": (lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"), 5, {}),
    "unipc": (lambda: diffusers.UniPCMultistepScheduler(), 5, {}),
    "euler": (lambda: diffusers.EulerDiscreteScheduler(), 5, {}),  # scales its model input and x_T
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("s", [0.0, 1.0, 2.5])
def test_guided_sampling_equals_the_two_pass_loop_with_any_scheduler(name, s):
    # In float64, so that one batched forward and two separate ones agree to rounding (float32: 5e-7 of the range).
    make_scheduler, steps, options = SCHEDULERS[name]
    pipe = conditional_pipe(make_scheduler(), unet=conditional_unet().double())
    labels = torch.tensor([0, 2, 1])
    latents = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = pipe(
        class_labels=labels,
        guidance_scale=s,
        latents=latents,
        num_inference_steps=steps,
        output_type="latent",
        generator=torch.Generator().manual_seed(2),
        **options,
    ).images
    if s not in (0.0, 1.0) and name.startswith("ddim"):
        options = {**options, "use_clipped_model_output": True}  # DDIM clips by default; guided, ε̃ is re-derived
    expected = reference_sample(
        pipe.unet, make_scheduler(), latents, [labels] * steps, s, steps, torch.Generator().manual_seed(2), **options
    )
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)


def unet_calls(pipe) -> list[tuple[int, list[int]]]:
    """(batch, class labels) of every UNet forward from now on."""
    calls = []

    def record(module, args, kwargs):
        calls.append((args[0].shape[0], kwargs["class_labels"].tolist()))

    pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    return calls


@pytest.mark.parametrize(
    ("kwargs", "labels_seen", "batch"),
    [
        ({"class_labels": [0, 2, 1], "guidance_scale": 2.0}, [0, 2, 1, NULL, NULL, NULL], 3),
        ({"class_labels": [0, 2, 1]}, [0, 2, 1, NULL, NULL, NULL], 3),  # the default scale guides
        ({"class_labels": [0, 2, 1], "guidance_scale": 1.0}, [0, 2, 1], 3),
        ({"class_labels": [0, 2, 1], "guidance_scale": 0.0}, [NULL] * 3, 3),
        ({"class_labels": 2, "batch_size": 3, "guidance_scale": 1}, [2, 2, 2], 3),
        ({"class_labels": [1], "batch_size": 2}, [1, 1, NULL, NULL], 2),
        ({"batch_size": 3}, [NULL] * 3, 3),  # no labels: the unconditional model, ∅
        ({"class_labels": torch.tensor(2)}, [2, NULL], 1),
    ],
    ids=["guided", "default_scale", "scale_1", "scale_0", "int_broadcast", "one_label_broadcast", "no_labels", "0d"],
)
def test_each_step_runs_one_unet_forward_with_both_halves_only_when_guiding(kwargs, labels_seen, batch):
    pipe = conditional_pipe(DDIMScheduler(num_train_timesteps=10))
    calls = unet_calls(pipe)
    images = pipe(num_inference_steps=3, output_type="latent", **kwargs).images
    assert calls == [(len(labels_seen), labels_seen)] * 3
    assert images.shape[0] == batch


def test_default_scale_is_2_and_batch_size_follows_the_labels():
    pipe = conditional_pipe(DDIMScheduler(num_train_timesteps=10))
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    default = pipe(class_labels=[0, 1], latents=latents, num_inference_steps=3, output_type="latent").images
    explicit = pipe(
        class_labels=[0, 1], latents=latents, num_inference_steps=3, output_type="latent", guidance_scale=2
    )
    scale_3 = pipe(class_labels=[0, 1], latents=latents, num_inference_steps=3, output_type="latent", guidance_scale=3)
    torch.testing.assert_close(default, explicit.images, atol=0, rtol=0)
    assert (default - scale_3.images).abs().max() > 1e-3


def test_stock_unet2dmodel_samples_the_same_guided_images(stock_unet_like):
    pipe = conditional_pipe(DDIMScheduler(num_train_timesteps=10))
    stock = conditional_pipe(DDIMScheduler(num_train_timesteps=10), unet=stock_unet_like(pipe.unet))
    kwargs = {"class_labels": [2, 0], "guidance_scale": 3.0, "num_inference_steps": 4, "output_type": "pt"}
    ours = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    theirs = stock(generator=torch.Generator().manual_seed(0), **kwargs).images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_generator_list_keeps_each_guided_sample_independent_of_its_batch():
    pipe = conditional_pipe(DDPMScheduler(num_train_timesteps=10))  # fresh noise at every step
    labels = [2, 0, 1]
    batch = pipe(
        class_labels=labels,
        guidance_scale=2.0,
        generator=[torch.Generator().manual_seed(i) for i in range(3)],
        output_type="latent",
    ).images
    for i, label in enumerate(labels):
        alone = pipe(
            class_labels=label, guidance_scale=2.0, generator=[torch.Generator().manual_seed(i)], output_type="latent"
        ).images
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=0)


def test_callback_sees_the_labels_and_its_labels_steer_the_following_steps():
    pipe = conditional_pipe(DDIMScheduler(num_train_timesteps=10))
    labels, switched = torch.tensor([0, 2]), torch.tensor([1, 1])
    seen = []

    def switch_after_first_step(pipeline, i, t, callback_kwargs):
        seen.append(callback_kwargs["class_labels"].tolist())
        return {"class_labels": switched} if i == 0 else {}

    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    got = pipe(
        class_labels=labels,
        guidance_scale=2.0,
        latents=latents,
        num_inference_steps=3,
        output_type="latent",
        callback_on_step_end=switch_after_first_step,
        callback_on_step_end_tensor_inputs=["latents", "class_labels"],
    ).images
    assert seen == [[0, 2], [1, 1], [1, 1]]
    reference_scheduler = DDIMScheduler(num_train_timesteps=10)  # clips x̂_0: guided, ε̃ is re-derived from it
    expected = reference_sample(
        pipe.unet, reference_scheduler, latents, [labels, switched, switched], 2.0, 3, use_clipped_model_output=True
    )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_callback_labels_are_checked_like_the_argument():
    pipe = conditional_pipe(DDIMScheduler(num_train_timesteps=10))
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 2\].*got \[3\]"):
        pipe(
            class_labels=[0],
            num_inference_steps=2,
            callback_on_step_end=lambda *args: {"class_labels": torch.tensor([NULL])},
        )


def test_learned_variance_comes_from_the_conditional_half():
    # DDPM with "learned_range" reads v from the second C channels. The closed-form model outputs a different v for
    # each label, so the guided run must match the loop fed v_c, and differ from one fed ∅'s v.
    scheduler = DDPMScheduler(num_train_timesteps=10, variance_type="learned_range", clip_sample=False)
    v_per_label = (0.1, 0.5, 0.9, 0.3)
    model = ClassConditionalMixtureEpsModel(
        scheduler.alphas_cumprod.tolist(), MIXTURE.weights, MIXTURE.means, MIXTURE.stds, learned_range_v=v_per_label
    )
    pipe = DDPMPipeline(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    labels = torch.tensor([0, 1, 2])
    latents = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    got = pipe(
        class_labels=labels,
        guidance_scale=3.0,
        latents=latents,
        generator=torch.Generator().manual_seed(1),
        output_type="latent",
    ).images

    def loop(variance_label):
        ref = DDPMScheduler.from_config(scheduler.config)
        ref.set_timesteps(10)
        x, generator = latents.clone(), torch.Generator().manual_seed(1)
        null = torch.full_like(labels, NULL)
        for t in ref.timesteps:
            cond, uncond = model(x, t, labels).sample, model(x, t, null).sample
            eps = uncond[:, :1] + 3.0 * (cond[:, :1] - uncond[:, :1])
            variance = (cond if variance_label == "c" else uncond)[:, 1:]
            x = ref.step(torch.cat([eps, variance], dim=1), t, x, generator=generator).prev_sample
        return x

    torch.testing.assert_close(got, loop("c"), atol=1e-6, rtol=0)
    assert (got - loop("null")).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------- names, saving
def test_label_names_map_to_ids_through_id2label_as_in_dit():
    pipe = conditional_pipe(DDIMScheduler(num_train_timesteps=10))
    assert pipe.num_classes == NUM_CLASSES
    assert pipe.labels == {"nought": 0, "one": 1, "two": 2, "zero": 0}
    assert pipe.get_label_ids(["two", "nought", "one"]) == [2, 0, 1]
    assert pipe.get_label_ids("two") == [2]
    with pytest.raises(ValueError, match=r"\['seven'\] are not in id2label; known names: \['nought', 'one'"):
        pipe.get_label_ids(["one", "seven"])


def test_id2label_is_written_to_model_index_and_read_back(tmp_path):
    pipe = conditional_pipe(DDIMScheduler(num_train_timesteps=10))
    # Stock DDPMPipeline passes no class_labels, so the pipeline class is saved in the custom layout.
    with pytest.warns(UserWarning, match="pipeline is saved in diffusers' custom-component layout.*class-conditional"):
        pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["id2label"] == {"0": "zero, nought", "1": "one", "2": "two"}  # JSON keys are strings
    loaded = DDPMPipeline.from_pretrained(tmp_path)
    assert loaded.id2label == ID2LABEL  # ints again
    assert loaded.get_label_ids(["two"]) == [2]
    by_diffusers = diffusers.DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert isinstance(by_diffusers, DDPMPipeline) and by_diffusers.id2label == ID2LABEL
    with pytest.raises(ValueError, match="class-conditional"):
        pipe.to_diffusers()


def test_string_keys_are_read_as_class_indices_and_an_unconditional_pipeline_has_none(tiny_unet, tmp_path):
    pipe = DDPMPipeline(conditional_unet(), DDIMScheduler(num_train_timesteps=10), id2label={"1": "one", "0": "zero"})
    assert pipe.id2label == {0: "zero", 1: "one"}
    unconditional = DDPMPipeline(tiny_unet(), DDIMScheduler(num_train_timesteps=10))
    assert unconditional.num_classes is None and unconditional.id2label is None
    unconditional.save_pretrained(tmp_path)
    assert "id2label" not in json.loads((tmp_path / "model_index.json").read_text())


@pytest.mark.parametrize(
    ("unet", "id2label", "error", "match"),
    [
        ("unconditional", {0: "zero"}, ValueError, "id2label was given but the UNet is unconditional"),
        ("conditional", {3: "null"}, ValueError, r"class indices in \[0, 2\].*got \[3\]"),
        ("conditional", {-1: "minus"}, ValueError, "id2label keys must be class indices >= 0"),
        ("conditional", {"x": "minus"}, ValueError, "id2label keys"),
        ("conditional", {0: 7}, TypeError, "id2label values must be names"),
        ("conditional", ["zero"], TypeError, "id2label must be a dict"),
    ],
)
def test_bad_id2label_is_refused_at_construction(tiny_unet, unet, id2label, error, match):
    model = conditional_unet() if unet == "conditional" else tiny_unet()
    with pytest.raises(error, match=match):
        DDPMPipeline(model, DDIMScheduler(num_train_timesteps=10), id2label=id2label)


# ------------------------------------------------------------------------------------- encoding, interpolation
def test_invert_with_labels_round_trips_and_guidance_makes_it_worse():
    # Exact ε of each class: encode class-k images with DDIM (η = 0) and decode them back with the same labels.
    scheduler = DDIMScheduler(clip_sample=False)
    model = ClassConditionalMixtureEpsModel(
        scheduler.alphas_cumprod.tolist(), MIXTURE.weights, MIXTURE.means, MIXTURE.stds, sample_size=8
    )
    pipe = DDPMPipeline(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    labels = torch.tensor([0, 1, 2])
    generator = torch.Generator().manual_seed(0)
    x0 = torch.stack([MIXTURE.means[k] + MIXTURE.stds[k] * torch.randn(1, 8, 8, generator=generator) for k in labels])
    x0 = x0.clamp(-1, 1)
    errors = {}
    for s in (1.0, 3.0):
        for steps in (20, 100):
            kwargs = {"class_labels": labels, "guidance_scale": s, "num_inference_steps": steps}
            x_T = pipe.invert(x0, value_range=(-1, 1), **kwargs)
            decoded = pipe(latents=x_T, output_type="latent", **kwargs).images
            errors[s, steps] = float(((decoded - x0) ** 2).mean())
    # Measured per-dim MSE: s = 1: 7.1e-3 (20 steps), 4.3e-4 (100); s = 3: 4.0e-2, 3.7e-3. Both fall as S^-2 (the
    # inverse is exact only in the ODE limit); guidance makes the field steeper and the round trip 6-9 times worse.
    for s in (1.0, 3.0):
        assert errors[s, 100] < errors[s, 20] / 10
    assert errors[1.0, 100] < 1e-3
    for steps in (20, 100):
        assert errors[3.0, steps] > 4 * errors[1.0, steps]


def test_interpolated_latents_decode_with_one_label_per_pair():
    pipe = conditional_pipe(DDIMScheduler(num_train_timesteps=10))
    a, b = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in (0, 1))
    path = pipe.interpolate(a, b, num=3)  # pair n at rows 3n ... 3n + 2
    labels = torch.tensor([2, 0]).repeat_interleave(3)
    images = pipe(latents=path, class_labels=labels, num_inference_steps=3, output_type="latent").images
    ends = pipe(
        latents=torch.stack([a[1], b[1]]), class_labels=0, batch_size=2, num_inference_steps=3, output_type="latent"
    ).images
    torch.testing.assert_close(images[[3, 5]], ends, atol=1e-5, rtol=0)
