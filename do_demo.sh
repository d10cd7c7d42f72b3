#!/usr/bin/env bash
# One command on a fresh clone: bootstraps .venv, generates the demo dataset
# (if missing), trains DL-DKD (ICCV recipe), DL-DKD++ and the no-teacher
# baseline on it on CPU, and prints their test results side by side.
# Usage: ./do_demo.sh [extra flags for method.train]
#   DEMO_ROOT (default ./demo_data) and DEMO_EPOCHS (default 10) can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh requirements.txt
ROOT=${DEMO_ROOT:-$PWD/demo_data}
EPOCHS=${DEMO_EPOCHS:-10}
if [ ! -f "$ROOT/tvr/TextData/tvrtest.caption.txt" ]; then
    python -m method.demo_data "$ROOT" --collection tvr
fi
RUNS="$ROOT/tvr/results"
COMMON=(--root_path "$ROOT" --collection tvr --visual_feature i3d_resnet --device cpu --num_workers 0 --preload
        --n_epoch "$EPOCHS" --bsz 32 --margin 0.1 --kd_schedule exp_decay --kd_k 0.95 --seed 2018)
STAMP=$(date +%Y%m%d_%H%M%S)
export TQDM_DISABLE=${TQDM_DISABLE:-1}
python -m method.train "${COMMON[@]}" --results_dir "$RUNS/demo-dldkd-$STAMP" "$@"
python -m method.train "${COMMON[@]}" --results_dir "$RUNS/demo-dldkdpp-$STAMP" --recipe dldkdpp "$@"
python -m method.train "${COMMON[@]}" --results_dir "$RUNS/demo-noteacher-$STAMP" --no_teacher "$@"
python - "$RUNS/demo-dldkd-$STAMP" "$RUNS/demo-dldkdpp-$STAMP" "$RUNS/demo-noteacher-$STAMP" <<'PY'
import json, sys
print("\nDemo test split, text-to-video (fused score):")
print(f"{'run':<28}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'R@100':>7}{'SumR':>8}")
for run, name in zip(sys.argv[1:], ("DL-DKD", "DL-DKD++ (--recipe dldkdpp)", "no teacher (--no_teacher)")):
    m = json.load(open(f"{run}/eval_test.json"))["t2v"]["fused"]
    print(f"{name:<28}{m['r1']:>7.1f}{m['r5']:>7.1f}{m['r10']:>7.1f}{m['r100']:>7.1f}{m['sumr']:>8.1f}")
PY
