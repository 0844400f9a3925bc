"""Train a DDPM (Ho et al. 2020): `accelerate launch examples/train.py --help` lists every flag with its default.

Example (the offline MNIST digits, a small CPU model):

    accelerate launch examples/train.py --model_config digits-16 --resolution 16 --output_dir ddpm-digits

The same, class-conditional (classifier-free guidance, Ho & Salimans 2022: the digit's label, dropped to the null
label with probability --class_dropout_prob; grids show one row per digit, guided with --guidance_scale):

    accelerate launch examples/train.py --model_config digits-16 --resolution 16 --class_conditional \
        --output_dir ddpm-digits-cond

A command line for diffusers' train_unconditional.py runs as it is: its flags are accepted under their names
(`--ddpm_num_steps`, `--model_config_name_or_path`, `--save_model_epochs`, ...), and the run prints each default
of ours that differs from that script's.
"""

from hf_ddpm.training.args import parse_args

if __name__ == "__main__":
    args = parse_args()
    # Imported after parsing so that `--help` and flag errors answer before Accelerate and the data stack load.
    from hf_ddpm.training.loop import train

    train(args)
