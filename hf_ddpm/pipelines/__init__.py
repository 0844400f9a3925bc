"""pipelines of hf_ddpm."""
