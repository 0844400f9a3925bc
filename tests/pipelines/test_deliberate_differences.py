"""Where hf_ddpm's pipeline deliberately behaves unlike diffusers 0.42; each test pins both behaviours."""

import diffusers
import pytest
import torch

from hf_ddpm import DDPMPipeline, DDPMScheduler, DDPMUNet2DModel


def test_pickled_weights_are_refused_on_save_where_diffusers_writes_them(tmp_path):
    torch.manual_seed(0)
    pipe = DDPMPipeline(unet=DDPMUNet2DModel.from_preset("tiny"), scheduler=DDPMScheduler())

    pipe.to_diffusers().save_pretrained(tmp_path / "stock", safe_serialization=False)
    assert list((tmp_path / "stock" / "unet").glob("*.bin"))

    with pytest.raises(ValueError, match="safe_serialization"):
        pipe.save_pretrained(tmp_path / "ours", safe_serialization=False)
    assert not list((tmp_path / "ours").rglob("*.bin"))
    assert isinstance(pipe.to_diffusers(), diffusers.DDPMPipeline)
