#!/usr/bin/env bash
# Train DL-DKD on TVR with the released ICCV recipe, then evaluate the best
# checkpoint on the test split. Edit the settings below; extra flags are passed
# through to method.train (python -m method.train --help lists them all).
# Usage: ./do_tvr.sh ROOTPATH [flags...]
set -euo pipefail
ROOTPATH=${1:?usage: ./do_tvr.sh ROOTPATH [flags...]}
shift

COLLECTION=tvr
VISUAL_FEATURE=i3d_resnet          # FeatureData/$VISUAL_FEATURE (BigFile folder or .hdf5)
Q_FEAT_SIZE=768                  # RoBERTa feature size
EXP_ID=dldkd
MARGIN=0.1                      # triplet margin
LR=2.5e-4
BSZ=128                         # videos per batch (with all their captions)
N_EPOCH=100
MAX_ES_CNT=10                   # early stop after this many epochs without val improvement (+1)
INPUT_DROP=0.1
DROP=0.1
KD_SCHEDULE=exp_decay           # dynamic distillation weight: released decay_way 1, k^epoch
KD_K=0.95
LOSS_SCALE_WEIGHT=0.1           # the KL term is multiplied by LOSS_SCALE_WEIGHT * w(epoch)
SEED=2018
DEVICE=auto                     # auto = CUDA when present, else CPU
NUM_WORKERS=4

source "$(dirname "$0")/scripts/launch_train.sh"
