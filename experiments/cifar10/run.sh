#!/usr/bin/env bash
# CIFAR-10 with one recipe for every model: Swin vs HWT, NAT vs HNT, and NAT in the Hilbert layout.
# All runs (five models per seed) share one GPU, started together: they are small.
#   usage: experiments/cifar10/run.sh CIFAR_NPZ OUT_DIR EPOCHS SEED [SEED ...]
set -euo pipefail
data=$1 out=$2 epochs=$3
shift 3
recipe=(--data "$data" --epochs "$epochs" --batch-size 250 --eval-batch-size 500 --lr 2e-3
        --weight-decay 0.05 --warmup-epochs 2 --quiet)
python -c "from hilbertattn.data import load_dataset; load_dataset('$data')"  # decode once
for seed in "$@"; do
    for model in swin_cifar hwt_cifar nat_cifar hnt_cifar; do
        hilbertattn train --model "$model" "${recipe[@]}" --seed "$seed" \
            --out "$out/$model-s$seed" &
    done
    hilbertattn train --model nat_cifar --model-arg layout=hilbert "${recipe[@]}" --seed "$seed" \
        --out "$out/nat_cifar_hilbert-s$seed" &
done
wait
