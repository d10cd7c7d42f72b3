#!/usr/bin/env bash
# Train on TVR, then evaluate the best checkpoint on the test split.
# Usage: [RECIPE=iccv|dldkdpp|gmmformer|gmmformer_v2|holmes|holmes_dual|ral] [STUDENT=NAME] [NPROC=N] ./do_tvr.sh ROOTPATH [flags...]
#   RECIPE   iccv (default): DL-DKD, ICCV 2023; dldkdpp: DL-DKD++ (soft alignment); gmmformer, gmmformer_v2: the
#            GMMFormer / GMMFormerV2 recipes (one network, no teacher); holmes: Holmes (one network, no teacher);
#            holmes_dual: its dual-query variant (TVR only); ral: RAL on GMMFormerV2 (one network, no teacher;
#            Charades-STA: our proposal, the authors publish none); see docs/recipes.md.
#   STUDENT  the branch network under DL-DKD (iccv, dldkdpp): dldkd (default), gmmformer, gmmformer_v2, holmes, holmes_dual, ral.
#   EXP_ID   name of the run (default: the recipe's, with the student's).
#   NPROC    processes (GPUs) on this machine, started by torchrun when > 1; --bsz stays the global batch.
#            Several machines: also NNODES, NODE_RANK and MASTER_ADDR / MASTER_PORT (or RDZV_ENDPOINT);
#            MAX_RESTARTS lets torchrun restart a failed group (add --results_dir DIR --resume_if_exists).
# The values below are the recipe table's (method/config/recipes.py; tests/test_packaging.py keeps them equal), so
# this script trains what `python -m method.train --recipe $RECIPE --collection tvr --root_path ROOTPATH` trains.
# Edit them here to change this script's runs; extra flags are passed through (python -m method.train --help).
set -euo pipefail
ROOTPATH=${1:?usage: ./do_tvr.sh ROOTPATH [flags...]}
shift

COLLECTION=tvr
VISUAL_FEATURE=i3d_resnet      # FeatureData/$VISUAL_FEATURE (BigFile folder or .hdf5)
RECIPE=${RECIPE:-iccv}
STUDENT=${STUDENT:-}               # the network of a branch: dldkd, gmmformer, gmmformer_v2, holmes, ral (default: the recipe's)
BSZ=128                         # videos per global batch (with all their captions), all processes together
MAX_ES_CNT=10                   # early stop after this many epochs without val improvement (+1)
KD_SCHEDULE=exp_decay           # dynamic distillation weight: k^epoch (released decay_way 1; DL-DKD++ "exp")
KD_K=0.95
LOSS_SCALE_WEIGHT=0.1           # the KL term is multiplied by LOSS_SCALE_WEIGHT * w(epoch)
DEVICE=auto                     # auto = CUDA when present, else CPU
NUM_WORKERS=4
case "$RECIPE" in
    iccv)         # the ICCV 2023 scripts
        N_EPOCH=100; SEED=2018; LR=2.5e-4; MARGIN=0.1; INPUT_DROP=0.1;  DROP=0.1;  HARD_NEGATIVE_START_EPOCH=0 ;;
    dldkdpp)      # the authors' DL-DKD++ scripts (soft alignment)
        N_EPOCH=120; SEED=9527; LR=3e-4;   MARGIN=0.1; INPUT_DROP=0.2;  DROP=0.2;  HARD_NEGATIVE_START_EPOCH=0 ;;
    gmmformer)    # the authors' GMMFormer config: one network, no teacher
        N_EPOCH=100; SEED=9527; LR=3e-4;   MARGIN=0.1; INPUT_DROP=0.2;  DROP=0.2;  HARD_NEGATIVE_START_EPOCH=30 ;;
    gmmformer_v2) # the authors' GMMFormerV2 config: one network, no teacher
        N_EPOCH=100; SEED=9527; LR=3e-4;   MARGIN=0.1; INPUT_DROP=0.2;  DROP=0.2;  HARD_NEGATIVE_START_EPOCH=20 ;;
    holmes)       # the authors' Holmes config: one network, no teacher
        N_EPOCH=100; SEED=0;    LR=3e-4;   MARGIN=0.1; INPUT_DROP=0.2;  DROP=0.2;  HARD_NEGATIVE_START_EPOCH=20; MAX_ES_CNT=20 ;;
    holmes_dual)  # the authors' dual-query Holmes config (multisrc/, TVR only): one network, no teacher
        N_EPOCH=150; SEED=0;    LR=3e-4;   MARGIN=0.1; INPUT_DROP=0.2;  DROP=0.2;  HARD_NEGATIVE_START_EPOCH=20; MAX_ES_CNT=20 ;;
    ral)          # the authors' RAL config: one network, no teacher
        N_EPOCH=150; SEED=9527; LR=3e-4;   MARGIN=0.1; INPUT_DROP=0.2;  DROP=0.2;  HARD_NEGATIVE_START_EPOCH=20; MAX_ES_CNT=15 ;;
    *) echo "RECIPE must be iccv, dldkdpp, gmmformer, gmmformer_v2, holmes, holmes_dual or ral, got '$RECIPE'" >&2; exit 2 ;;
esac

source "$(dirname "$0")/scripts/launch_train.sh"
