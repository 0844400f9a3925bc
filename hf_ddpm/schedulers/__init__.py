"""schedulers of hf_ddpm."""
