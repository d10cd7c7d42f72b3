# Sourced at the end of do_tvr.sh / do_activitynet.sh / do_charades.sh: runs
# method.train with the settings those scripts define, plus the caller's extra flags.
source "$(dirname "${BASH_SOURCE[0]}")/python.sh"
exec "$PYTHON" -m method.train --root_path "$ROOTPATH" --collection "$COLLECTION" \
    --visual_feature "$VISUAL_FEATURE" --q_feat_size "$Q_FEAT_SIZE" --exp_id "$EXP_ID" \
    --margin "$MARGIN" --lr "$LR" --bsz "$BSZ" --n_epoch "$N_EPOCH" --max_es_cnt "$MAX_ES_CNT" \
    --input_drop "$INPUT_DROP" --drop "$DROP" --kd_schedule "$KD_SCHEDULE" --kd_k "$KD_K" \
    --loss_scale_weight "$LOSS_SCALE_WEIGHT" --seed "$SEED" --device "$DEVICE" \
    --num_workers "$NUM_WORKERS" "$@"
