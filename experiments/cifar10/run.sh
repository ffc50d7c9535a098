#!/usr/bin/env bash
# CIFAR-10 with one recipe for every model: Swin vs HWT, NAT vs HNT, and NAT in the Hilbert layout.
# All runs (every model and seed) share one GPU, started together: they are small.
#   usage: experiments/cifar10/run.sh CIFAR_NPZ OUT_DIR EPOCHS SEED [SEED ...]
# Environment: MODELS, the runs per seed as MODEL[:KEY=VALUE] (default: all five below);
# MODEL_ARG, one more KEY=VALUE passed to every model (e.g. "depths=(2, 6, 2)"); TRAIN_ARGS,
# more train options appended to the recipe, the later ones winning
# (e.g. "--lr 2e-3 --warmup-epochs 2").
# Run again with the same arguments, it skips finished runs (summary.json) and continues the others
# from their last checkpoint, so a run cut short loses at most one epoch.
set -euo pipefail
data=$1 out=$2 epochs=$3
shift 3
models=${MODELS:-"swin_cifar hwt_cifar nat_cifar hnt_cifar nat_cifar:layout=hilbert"}
recipe=(--data "$data" --epochs "$epochs" --batch-size 250 --eval-batch-size 500 --lr 1e-3
        --weight-decay 0.05 --warmup-epochs 5 --quiet)
[[ -n ${MODEL_ARG:-} ]] && recipe+=(--model-arg "$MODEL_ARG")
[[ -n ${TRAIN_ARGS:-} ]] && read -ra extra <<< "$TRAIN_ARGS" && recipe+=("${extra[@]}")
python -c "from hilbertattn.data import load_dataset; load_dataset('$data')"  # decode once
for seed in "$@"; do
    for run in $models; do
        model=${run%%:*} args=()
        name=$model
        if [[ $run == *:* ]]; then
            args=(--model-arg "${run#*:}")
            name=${model}_${run#*=}  # nat_cifar:layout=hilbert -> nat_cifar_hilbert
        fi
        dir=$out/$name-s$seed
        [[ -f $dir/summary.json ]] && echo "$dir: finished, skipped" && continue
        [[ -f $dir/checkpoint.pt ]] && args+=(--resume "$dir/checkpoint.pt")
        hilbertattn train --model "$model" "${args[@]}" "${recipe[@]}" --seed "$seed" \
            --out "$dir" &
    done
done
wait
