#!/usr/bin/env bash
# A new collection from raw videos and captions: every feature (python -m method.prepare), then DL-DKD training.
#
# Usage: ./do_custom.sh ROOTPATH COLLECTION VIDEO_DIR [flags of method.prepare]
#   e.g. ./do_custom.sh ~/data mydata ~/mydata/videos --captions ~/mydata/captions.txt --split_rule ratio:0.7,0.1,0.2
#        ./do_custom.sh ~/data mydata ~/mydata/videos         # captions already in ~/data/mydata/TextData/
#   TRAIN=0            only prepare the features
#   TRAIN_FLAGS="..."  extra flags of method.train (the ICCV recipe's values otherwise)
# See docs/own_data.md. The Python environment needs requirements-extract.txt; afterwards evaluate the run with
#   ./do_test.sh COLLECTION VISUAL_FEATURE ROOTPATH RUN_DIR
set -euo pipefail
usage="usage: ./do_custom.sh ROOTPATH COLLECTION VIDEO_DIR [flags of method.prepare] (see the head of $0)"
root_path=${1:?$usage}
collection=${2:?$usage}
video_dir=${3:?$usage}
shift 3
source "$(dirname "$0")/scripts/python.sh"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$PYTHON" -m method.prepare "$root_path" "$collection" --videos "$video_dir" "$@" | tee "$log"
if [ "${TRAIN:-1}" = 0 ]; then
    exit 0
fi
# The last line of method.prepare is the shell-quoted training command for what it wrote.
train_args=$(sed -n 's/^train with: python -m method.train //p' "$log" | tail -n 1)
eval "set -- $train_args"
# shellcheck disable=SC2086  # TRAIN_FLAGS is split into flags on purpose
exec "$PYTHON" -m method.train "$@" ${TRAIN_FLAGS:-}
