"""models of hf_ddpm."""
