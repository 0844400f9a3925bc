"""Class labels and classifier-free guidance (Ho & Salimans 2022) for `DDPMPipeline`.

One network ε_θ(x_t, t, c) trained with the label dropped to a null label ∅ now and then is both the conditional and
the unconditional model. As in diffusers' `DiTPipeline`, ∅ is the last row of the UNet's class-embedding table, index
`num_classes`, so a guided model has `num_class_embeds = num_classes + 1`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DEFAULT_GUIDANCE_SCALE",
    "ClassifierFreeGuidance",
    "as_label_tensor",
    "check_guidance_scale",
    "normalize_id2label",
]

# s = 1 + w with the paper's w = 1: between the FID-best w ≈ 0.1–0.3 and the sharper, less diverse w ≥ 2 of Ho &
# Salimans (ImageNet 64²); small models trained on small data need some guidance to draw the asked-for class.
DEFAULT_GUIDANCE_SCALE = 2.0


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """The labels a sampling run feeds the UNet, and how its outputs combine into ε̃.

    `class_labels` are the asked-for c, one per sample (`None`: none asked for); `model_labels` what the UNet gets at
    each step: `None` (unconditional UNet), c, ∅, or c then ∅ for one batched forward of both halves.
    """

    class_labels: torch.Tensor | None
    model_labels: torch.Tensor | None
    guidance_scale: float
    batch_size: int

    @classmethod
    def build(
        cls,
        class_labels: torch.Tensor | None,
        null_label: int | None,
        guidance_scale: float,
        batch_size: int,
        device: torch.device,
    ) -> ClassifierFreeGuidance:
        """`class_labels` (one per sample, or `None`) and ∅ = `null_label` (`None` for an unconditional UNet)."""
        if null_label is None:
            return cls(None, None, guidance_scale, batch_size)
        null = torch.full((batch_size,), null_label, dtype=torch.long, device=device)
        if class_labels is None or guidance_scale == 0:
            model_labels = null
        elif guidance_scale == 1:
            model_labels = class_labels
        else:
            model_labels = torch.cat([class_labels, null])
        return cls(class_labels, model_labels, guidance_scale, batch_size)

    @property
    def is_batched(self) -> bool:
        """Whether each step runs the conditional and the unconditional half in one forward."""
        return self.model_labels is not None and self.model_labels.shape[0] == 2 * self.batch_size

    def model_input(self, sample: torch.Tensor) -> torch.Tensor:
        """x_t for the conditional half and again for the unconditional one, when both run."""
        return torch.cat([sample, sample]) if self.is_batched else sample

    def unet_kwargs(self) -> dict[str, torch.Tensor]:
        """`class_labels=` for a class-conditional UNet; nothing for an unconditional one, whose forward may lack it."""
        return {} if self.model_labels is None else {"class_labels": self.model_labels}

    def combine(self, model_output: torch.Tensor, channels: int) -> torch.Tensor:
        r"""
        ε̃ = ε_θ(x_t, ∅) + s · (ε_θ(x_t, c) − ε_θ(x_t, ∅)) on the first `channels` channels; in the paper's w = s − 1,
        ε̃ = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, ∅). A learned-variance model's extra channels come from the conditional
        half alone, as in improved-diffusion and GLIDE: guidance moves the mean, not the variance.
        """
        if not self.is_batched:
            return model_output
        cond, uncond = model_output.chunk(2)
        eps_c, eps_null = cond[:, :channels], uncond[:, :channels]
        guided = eps_null + self.guidance_scale * (eps_c - eps_null)
        return torch.cat([guided, cond[:, channels:]], dim=1)


def check_guidance_scale(guidance_scale: Any, num_classes: int | None, has_labels: bool) -> None:
    """Refuse a guidance scale that is no finite number >= 0, or that asks for guidance nothing can give."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
        raise TypeError(f"guidance_scale must be a real number >= 0, got {type(guidance_scale).__name__}.")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}.")
    if num_classes is None and guidance_scale != 1:
        raise ValueError(
            f"guidance_scale={guidance_scale!r} needs a class-conditional UNet (num_class_embeds set); this UNet is "
            "unconditional, so leave guidance_scale at None or 1."
        )
    if num_classes is not None and not has_labels and guidance_scale not in (0, 1):
        raise ValueError(
            f"guidance_scale={guidance_scale!r} needs class_labels: without them the model samples with the null "
            f"label ∅ alone, which no guidance scale changes. Pass class_labels=... (ints in [0, {num_classes - 1}])."
        )


def as_label_tensor(class_labels: Any) -> torch.Tensor:
    """`class_labels` (an int, a sequence of ints or an integer tensor) as a 1-d int64 tensor; types checked only."""
    if isinstance(class_labels, torch.Tensor):
        if class_labels.dtype == torch.bool or class_labels.is_floating_point() or class_labels.is_complex():
            raise TypeError(f"class_labels must be an integer tensor, got dtype {class_labels.dtype}.")
        if class_labels.ndim > 1:
            raise ValueError(f"class_labels must be 0-d or 1-d, got shape {tuple(class_labels.shape)}.")
        return class_labels.reshape(-1).long()
    items = list(class_labels) if isinstance(class_labels, Sequence) and not isinstance(class_labels, str) else None
    if items is None:
        items = [class_labels]
    bad = [item for item in items if isinstance(item, bool) or not isinstance(item, numbers.Integral)]
    if bad:
        hint = " Map names to ids with pipe.get_label_ids([...])." if any(isinstance(b, str) for b in bad) else ""
        raise TypeError(f"class_labels must be ints (class indices), got {bad[:5]!r}.{hint}")
    return torch.tensor([int(item) for item in items], dtype=torch.long)


def normalize_id2label(id2label: Mapping[int | str, str] | None) -> dict[int, str] | None:
    """`id2label` with int keys in increasing order; JSON (model_index.json) turns them into strings."""
    if id2label is None:
        return None
    if not isinstance(id2label, Mapping):
        raise TypeError(f"id2label must be a dict of class index -> name, got {type(id2label).__name__}.")
    normalized = {}
    for key, name in id2label.items():
        index = int(key) if isinstance(key, str) and key.strip().isdigit() else key
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or index < 0:
            raise ValueError(f"id2label keys must be class indices >= 0 (ints or digit strings), got {key!r}.")
        if not isinstance(name, str):
            raise TypeError(f"id2label values must be names (str), got {name!r} for class {key!r}.")
        normalized[int(index)] = name
    return dict(sorted(normalized.items()))
