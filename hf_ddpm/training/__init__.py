"""training of hf_ddpm."""
