#!/usr/bin/env bash
# Evaluate a trained DL-DKD model (this project's run or the authors' released checkpoint).
# Usage: ./do_test.sh DATASET FEATURE ROOTPATH MODELDIR [flags...]
#   MODELDIR: a folder holding model.ckpt and opt.json, or the name of one in
#             ROOTPATH/DATASET/results/. Flags: --eval_split val, --device cpu,
#             --save_scores, --eval_query_bsz N ... (python -m method.eval --help)
#   NPROC=N:  N processes (torchrun --standalone, one GPU each), each evaluating a share of the split;
#             the same metrics as one process.
# Writes MODELDIR/eval_<split>.json and prints text-to-video and video-to-text tables.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: ./do_test.sh DATASET FEATURE ROOTPATH MODELDIR [flags...]" >&2
    exit 2
fi
DATASET=$1; FEATURE=$2; ROOTPATH=$3; MODELDIR=$4
shift 4
source "$(dirname "$0")/scripts/python.sh"
ARGS=(--collection "$DATASET" --visual_feature "$FEATURE" --root_path "$ROOTPATH" --model_dir "$MODELDIR")
NPROC=${NPROC:-1}
if [ "$NPROC" -le 1 ]; then
    exec "$PYTHON" -m method.eval "${ARGS[@]}" "$@"
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m method.eval "${ARGS[@]}" "$@"
