"""The exponential moving average of the weights that DDPM samples from (Ho et al. 2020, §4 and Appendix B: decay
0.9999), as diffusers' `EMAModel` with a one-pass update.

diffusers' `EMAModel.step` computes `θ̄ ← θ̄ − (1 − d)(θ̄ − θ)` with a temporary per parameter (three passes over
the weights; `foreach=True` makes them multi-tensor but keeps a full-size temporary). The same update is a linear
interpolation, `θ̄ ← θ̄ + (1 − d)(θ − θ̄) = lerp(θ̄, θ, 1 − d)`, which torch's own EMA helper
(`torch.optim.swa_utils.get_ema_multi_avg_fn`) runs as one `torch._foreach_lerp_`: one pass, no temporary
(timings against diffusers' step: `benchmarks/README.md`).

Everything else (the warm-up decay, `store`/`restore`/`copy_to`, `save_pretrained`/`from_pretrained`, the state
dict that checkpoints hold) is diffusers' own, so checkpoints are interchangeable with a stock `EMAModel`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers.training_utils import EMAModel as _DiffusersEMAModel
from diffusers.utils import is_transformers_available

__all__ = ["EMAModel"]


def _deepspeed_zero3_enabled() -> bool:
    """Whether ZeRO-3 shards the parameters, which then have to be gathered: diffusers' `step` does that."""
    if not is_transformers_available():
        return False
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


class EMAModel(_DiffusersEMAModel):
    """
    diffusers' `EMAModel` whose `step` updates all shadow weights with one fused linear interpolation.

    Takes the same arguments as `diffusers.training_utils.EMAModel`. `step` falls back to diffusers' implementation
    where the one-pass update does not apply: a shadow weight of another dtype or device than its parameter, or
    DeepSpeed ZeRO-3 sharding.
    """

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """
        Move the shadow weights towards `parameters`: `θ̄ ← lerp(θ̄, θ, 1 − d)` with `d = self.get_decay(step)`;
        shadows of parameters that do not require grad are copied.

        Args:
            parameters (`Iterable[torch.nn.Parameter]`): The trained parameters, in the order the EMA was built with.
        """
        if isinstance(parameters, torch.nn.Module):  # deprecated in diffusers; its step warns and unwraps
            return super().step(parameters)
        parameters = list(parameters)
        if len(parameters) != len(self.shadow_params):
            raise ValueError(
                f"`step` got {len(parameters)} parameters but the EMA tracks {len(self.shadow_params)}: pass the "
                "parameters of the model the EMA was built from, in the same order."
            )
        mismatched = any(
            s.dtype != p.dtype or s.device != p.device for s, p in zip(self.shadow_params, parameters, strict=True)
        )
        if mismatched or _deepspeed_zero3_enabled():
            return super().step(parameters)

        self.optimization_step += 1
        decay = self.get_decay(self.optimization_step)
        self.cur_decay_value = decay
        trained = [(s, p) for s, p in zip(self.shadow_params, parameters, strict=True) if p.requires_grad]
        frozen = [(s, p) for s, p in zip(self.shadow_params, parameters, strict=True) if not p.requires_grad]
        if trained:
            shadows, params = zip(*trained)
            torch._foreach_lerp_(list(shadows), list(params), 1.0 - decay)
        if frozen:
            shadows, params = zip(*frozen)
            torch._foreach_copy_(list(shadows), list(params))
