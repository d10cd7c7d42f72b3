"""Training losses as pure functions of score tensors, and the objective that names and weights them.

Modules: ``ranking`` (triplet, InfoNCE, DL-DKD++ soft-target InfoNCE as per-row
/ per-column terms), ``distill`` (the teacher's frame-level KL), ``query``
(the GMMFormer family's query-diversity and matching losses), ``objective``
(``DLDKDLoss``: every term of a training step, weighted and named).
"""
from method.losses.distill import kl_distill_loss
from method.losses.evidential import (
    EvidentialSettings,
    HolmesLossOutput,
    batch_pot,
    dc_loss,
    ds_combine,
    edl_alpha,
    edl_loss,
    holmes_loss,
    holmes_loss_details,
    masked_edl_loss,
    pack_by_video,
    query_identification,
    smooth_labels,
)
from method.losses.objective import (
    BatchLayout,
    DLDKDLoss,
    LocalBatch,
    LossSettings,
    Objective,
    QueryDiversity,
    SoftNCEOptions,
    TeacherScores,
)
from method.losses.query import ot_loss, ot_matches, ot_pair_count, qdl_v1, qdl_v1_terms, qdl_v2, qdl_v2_terms
from method.losses.ral import (
    AUTHORS_LOG_NAMES,
    authors_log,
    mil_loss,
    mil_nce,
    ral_loss_components,
    ral_objective,
    vib_terms,
    weighted_terms,
)
from method.losses.ranking import (
    draw_t2v,
    draw_v2t,
    hard_count,
    nce_loss,
    nce_t2v_terms,
    nce_v2t_terms,
    positive_mask,
    sample_t2v_negatives,
    sample_v2t_negatives,
    soft_nce_loss,
    soft_nce_reduce,
    soft_nce_t2v_terms,
    soft_nce_v2t_terms,
    t2v_negatives,
    triplet_loss,
    triplet_t2v_terms,
    triplet_v2t_terms,
    v2t_negatives,
)

__all__ = [
    "EvidentialSettings", "HolmesLossOutput", "batch_pot", "dc_loss", "ds_combine", "edl_alpha", "edl_loss",
    "holmes_loss", "holmes_loss_details", "masked_edl_loss", "pack_by_video", "query_identification", "smooth_labels",
    "kl_distill_loss", "BatchLayout", "DLDKDLoss", "LocalBatch", "LossSettings", "Objective", "QueryDiversity", "SoftNCEOptions",
    "TeacherScores", "ot_loss", "ot_matches", "ot_pair_count", "qdl_v1", "qdl_v1_terms", "qdl_v2", "qdl_v2_terms",
    "draw_t2v", "draw_v2t", "hard_count", "nce_loss", "nce_t2v_terms", "nce_v2t_terms", "positive_mask",
    "sample_t2v_negatives", "sample_v2t_negatives", "soft_nce_loss", "soft_nce_reduce", "soft_nce_t2v_terms",
    "soft_nce_v2t_terms", "t2v_negatives", "triplet_loss", "triplet_t2v_terms", "triplet_v2t_terms", "v2t_negatives",
    "AUTHORS_LOG_NAMES", "authors_log", "mil_loss", "mil_nce", "ral_loss_components", "ral_objective", "vib_terms",
    "weighted_terms",
]
