#!/usr/bin/env bash
# CLIP teacher features for a dataset in the released layout (docs/teacher_features.md).
#
# Usage: ./do_extract_teacher.sh ROOTPATH COLLECTION VIDEO_DIR [extra flags of method.extract_teacher]
#   e.g. ./do_extract_teacher.sh ~/data tvr ~/tvqa/frames_hq/bbt_frames --align_to_student
#        ./do_extract_teacher.sh ~/data mydata ~/mydata/videos --fps 1
#
# Activates nothing: run it with the Python environment that has the project's
# requirements plus the optional extractor ones, e.g.
#   .venv/bin/pip install -r requirements-extract.txt && source .venv/bin/activate
# A sampling flag is required: --fps F or --align_to_student.
set -euo pipefail
if [ "$#" -lt 3 ]; then
    sed -n '4,6p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
root_path=$1
collection=$2
video_dir=$3
shift 3
# Make `method` importable from any working directory (relative paths stay relative to it).
export PYTHONPATH="$(cd "$(dirname "$0")" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec python -m method.extract_teacher --root_path "$root_path" --collection "$collection" --videos "$video_dir" "$@"
