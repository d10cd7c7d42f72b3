# Sourced at the end of do_tvr.sh / do_activitynet.sh / do_charades.sh: runs method.train with the
# settings those scripts define, plus the caller's extra flags; with NPROC > 1 or NNODES > 1 through torchrun.
source "$(dirname "${BASH_SOURCE[0]}")/python.sh"
ARGS=(--root_path "$ROOTPATH" --collection "$COLLECTION" --visual_feature "$VISUAL_FEATURE" --recipe "$RECIPE"
      --margin "$MARGIN" --lr "$LR" --bsz "$BSZ" --n_epoch "$N_EPOCH" --max_es_cnt "$MAX_ES_CNT"
      --input_drop "$INPUT_DROP" --drop "$DROP" --hard_negative_start_epoch "$HARD_NEGATIVE_START_EPOCH"
      --kd_schedule "$KD_SCHEDULE" --kd_k "$KD_K" --loss_scale_weight "$LOSS_SCALE_WEIGHT" --seed "$SEED"
      --device "$DEVICE" --num_workers "$NUM_WORKERS" ${STUDENT:+--student "$STUDENT"} ${EXP_ID:+--exp_id "$EXP_ID"})
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}
if [ "$NPROC" -le 1 ] && [ "$NNODES" -le 1 ]; then
    exec "$PYTHON" -m method.train "${ARGS[@]}" "$@"
fi
LAUNCH=(-m torch.distributed.run --nproc_per_node "$NPROC" --nnodes "$NNODES")
if [ "$NNODES" -le 1 ]; then
    LAUNCH+=(--standalone)
elif [ -n "${RDZV_ENDPOINT:-}" ]; then
    LAUNCH+=(--rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-dldkd}")
else
    LAUNCH+=(--node_rank "${NODE_RANK:?NODE_RANK is required when NNODES > 1}"
             --master_addr "${MASTER_ADDR:?MASTER_ADDR (or RDZV_ENDPOINT) is required when NNODES > 1}"
             --master_port "${MASTER_PORT:-29500}")
fi
if [ -n "${MAX_RESTARTS:-}" ]; then
    LAUNCH+=(--max-restarts "$MAX_RESTARTS")
fi
exec "$PYTHON" "${LAUNCH[@]}" -m method.train "${ARGS[@]}" "$@"
