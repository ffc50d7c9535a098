#!/usr/bin/env bash
# CIFAR-10 with one recipe for every model: Swin vs HWT, NAT vs HNT, and NAT in the Hilbert layout.
# The five runs of one seed share one GPU (they are small), started together.
#   usage: experiments/cifar10/run.sh CIFAR_NPZ SEED OUT_DIR
set -euo pipefail
data=$1 seed=$2 out=$3
recipe=(--data "$data" --epochs 15 --batch-size 250 --eval-batch-size 500 --lr 2e-3
        --weight-decay 0.05 --warmup-epochs 2 --seed "$seed" --quiet)
python -c "from hilbertattn.data import load_dataset; load_dataset('$data')"  # decode once
hilbertattn train --model swin_cifar "${recipe[@]}" --out "$out/swin_cifar-s$seed" &
hilbertattn train --model hwt_cifar "${recipe[@]}" --out "$out/hwt_cifar-s$seed" &
hilbertattn train --model nat_cifar "${recipe[@]}" --out "$out/nat_cifar-s$seed" &
hilbertattn train --model hnt_cifar "${recipe[@]}" --out "$out/hnt_cifar-s$seed" &
hilbertattn train --model nat_cifar --model-arg layout=hilbert "${recipe[@]}" \
    --out "$out/nat_cifar_hilbert-s$seed" &
wait
