#!/usr/bin/env bash
# Train DL-DKD on TVR, then evaluate the best checkpoint on the test split.
# Usage: [RECIPE=iccv|dldkdpp|gmmformer|gmmformer_v2] [STUDENT=NAME] [NPROC=N] ./do_tvr.sh ROOTPATH [flags...]
#   RECIPE   iccv (default): the ICCV 2023 recipe; dldkdpp: DL-DKD++ (soft alignment); gmmformer,
#            gmmformer_v2: the GMMFormer / GMMFormerV2 recipes (one network, no teacher); see README "Recipes".
#   STUDENT  the branch network under DL-DKD (iccv, dldkdpp): dldkd (default), gmmformer or gmmformer_v2.
#   NPROC    processes (GPUs) on this machine, started by torchrun when > 1; --bsz stays the global batch.
#            Several machines: also NNODES, NODE_RANK and MASTER_ADDR / MASTER_PORT (or RDZV_ENDPOINT);
#            MAX_RESTARTS lets torchrun restart a failed group (add --results_dir DIR --resume_if_exists).
# Edit the settings below; extra flags are passed through to method.train (python -m method.train --help).
set -euo pipefail
ROOTPATH=${1:?usage: ./do_tvr.sh ROOTPATH [flags...]}
shift

COLLECTION=tvr
VISUAL_FEATURE=i3d_resnet          # FeatureData/$VISUAL_FEATURE (BigFile folder or .hdf5)
Q_FEAT_SIZE=768                  # RoBERTa feature size
RECIPE=${RECIPE:-iccv}
STUDENT=${STUDENT:-}               # the network of a branch: dldkd, gmmformer, gmmformer_v2 (default: the recipe's)
RECIPE_ARGS=()
BSZ=128                         # videos per global batch (with all their captions), all processes together
MAX_ES_CNT=10                   # early stop after this many epochs without val improvement (+1)
KD_SCHEDULE=exp_decay           # dynamic distillation weight: k^epoch (released decay_way 1; DL-DKD++ "exp")
KD_K=0.95
LOSS_SCALE_WEIGHT=0.1           # the KL term is multiplied by LOSS_SCALE_WEIGHT * w(epoch)
DEVICE=auto                     # auto = CUDA when present, else CPU
NUM_WORKERS=4
case "$RECIPE" in
    iccv)     # the ICCV 2023 script
        EXP_ID=dldkd; N_EPOCH=100; SEED=2018; LR=2.5e-4; MARGIN=0.1; INPUT_DROP=0.1; DROP=0.1 ;;
    dldkdpp)  # the authors' DL-DKD++ script: soft alignment (set by --recipe dldkdpp), 120 epochs
        EXP_ID=dldkdpp; N_EPOCH=120; SEED=9527; LR=3e-4; MARGIN=0.1; INPUT_DROP=0.2; DROP=0.2 ;;
    gmmformer)     # the authors' GMMFormer config (Configs/tvr.py): one network, no teacher
        EXP_ID=gmmformer; N_EPOCH=100; SEED=9527; LR=3e-4; MARGIN=0.1; INPUT_DROP=0.2; DROP=0.2
        RECIPE_ARGS=(--hard_negative_start_epoch 30 --clip_nce_weight 0.05 --nce_weight 0.04 --qdl_weight 0.001
                     --qdl_margin 0.15 --qdl_scale 32) ;;
    gmmformer_v2)  # the authors' GMMFormerV2 config
        EXP_ID=gmmformer_v2; N_EPOCH=100; SEED=9527; LR=3e-4; MARGIN=0.1; INPUT_DROP=0.2; DROP=0.2
        RECIPE_ARGS=(--hard_negative_start_epoch 20 --clip_nce_weight 0.05 --nce_weight 0.04 --qdl_weight 8e-5
                     --qdl_margin 0.15 --qdl_scale 32 --qdl_focal 1 --ot_weight 0.09 --sft_factor 0.09) ;;
    *) echo "RECIPE must be iccv, dldkdpp, gmmformer or gmmformer_v2, got '$RECIPE'" >&2; exit 2 ;;
esac

source "$(dirname "$0")/scripts/launch_train.sh"
