"""evaluation of hf_ddpm."""
