"""pipelines of hf_ddpm: `DDPMPipeline` (DDPM/DDIM sampling, DDIM encoding, slerp), its save layout and model card."""

from hf_ddpm.pipelines.model_card import build_model_card, write_model_card
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline, slerp

__all__ = ["DDPMPipeline", "build_model_card", "slerp", "write_model_card"]
