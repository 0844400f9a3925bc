"""A class-conditional DDPMUNet2DModel for classifier-free guidance against stock diffusers UNet2DModel.

Guidance needs one null label ∅ besides the K classes; as in DiT it is index K, so the table has
`num_class_embeds = K + 1` rows. Same config and weights must give stock's output for every row, ∅ included.
"""

import pytest
import torch
from diffusers import UNet2DModel

from hf_ddpm.models.presets import PRESETS
from hf_ddpm.models.unet_2d import DDPMUNet2DModel

NUM_CLASSES = 10
CONFIG = {**PRESETS["tiny"], "num_class_embeds": NUM_CLASSES + 1}
NULL_LABEL = NUM_CLASSES


def paired_models() -> tuple[UNet2DModel, DDPMUNet2DModel]:
    torch.manual_seed(0)
    ours = DDPMUNet2DModel(**CONFIG)
    with torch.no_grad():  # random weights everywhere, so a mis-mapped table row cannot hide behind a zero init
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stock = UNet2DModel(**CONFIG)
    stock.load_state_dict(ours.state_dict(), strict=True)
    return stock.eval(), ours.eval()


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize(
    "labels",
    [[0, 3, 9, NULL_LABEL], [NULL_LABEL] * 4, [NULL_LABEL], [7]],
    ids=["classes_and_null", "all_null", "one_null_for_the_batch", "one_class_for_the_batch"],
)
def test_matches_stock_unet2dmodel_for_every_label_including_null(labels):
    stock, ours = paired_models()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=generator)
    t = torch.tensor([10, 500, 999, 250])
    class_labels = torch.tensor(labels)
    with torch.no_grad():
        expected = stock(x, t, class_labels=class_labels).sample
        got = ours(x, t, class_labels=class_labels).sample
    assert rel_err(got, expected) <= 1e-4


def test_null_label_is_its_own_embedding_row():
    _, ours = paired_models()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eps_null = ours(x, 500, class_labels=torch.tensor([NULL_LABEL] * 2)).sample
        eps_last_class = ours(x, 500, class_labels=torch.tensor([NULL_LABEL - 1] * 2)).sample
        eps_first_class = ours(x, 500, class_labels=torch.tensor([0, 0])).sample
    assert rel_err(eps_null, eps_last_class) > 1e-3
    assert rel_err(eps_null, eps_first_class) > 1e-3
