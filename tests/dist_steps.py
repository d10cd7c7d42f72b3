"""Training steps of one process or of several (gloo on the CPU), for tests/test_distributed.py.

``run_steps`` trains a tiny model of a recipe (``CASES``: the student and its
objective, from the training flags through ``method.config.settings.model_config`` and
``make_loss``) on fixed global batches through the training loop's own
``train_step``; each process takes its share of every batch with
``GlobalBatchSampler``'s own ``share``. ``spawn_worker`` is the entry point of a
spawned process; ``free_port`` a port for the process group's rendezvous (also tests/test_eval_sharded.py).
"""
import os
import socket

import numpy as np
import torch

from method.config.flags import parse_train_args
from method.config.settings import loss_settings, model_config
from method.data import clip_features, collate_train
from method.data.collate import sort_key
from method.data.sampler import share
from method.models.model import DLDKD
from method.models.students.blocks import DyGMMBlock, GaussianSelfAttention, SelfAttentionCore
from method.models.students.holmes import HolmesDyGMMBlock
from method.models.teacher import PrecomputedTeacher
from method.parallel import distributed
from method.training import loop, rng
from method.training.optim import build_optimizer

DV, DQ, DT = 6, 5, 4
TINY = ["--root_path", "unused", "--collection", "tvr", "--hidden_size", "8", "--n_heads", "2",
        "--input_drop", "0", "--drop", "0", "--margin", "0.1", "--hard_pool_size", "2"]
# The training flags of each case on top of TINY. The GMMFormer recipes' query-diversity and OT weights are
# raised from 0.001 / 8e-5 / 0.09 so that those terms' gradients weigh in the comparison of the gradients.
CASES = {
    "iccv": [],
    "soft": ["--label_style", "soft", "--separate_query_proj"],
    "gmmformer": ["--recipe", "gmmformer", "--qdl_weight", "0.05"],  # one network: clip + frame NCE, triplet, QDL v1
    "gmmformer_v2": ["--recipe", "gmmformer_v2", "--qdl_weight", "0.01", "--ot_weight", "0.5"],  # QDL v2, OT
    "dldkd_gmmformer_v2": ["--student", "gmmformer_v2", "--qdl_weight", "0.01", "--ot_weight", "0.5"],  # KD: frames
    "dldkd_gmmformer": ["--student", "gmmformer", "--qdl_weight", "0.05"],  # two branches, KD over the 32 clips
    # the evidential terms (whole batch, replicated on every process) after the warm-up: partial OT, smoothing
    "holmes": ["--recipe", "holmes", "--qdl_weight", "0.01", "--intra_edl_weight", "0.5", "--edl_weight", "0.2"],
    "dldkd_holmes": ["--student", "holmes", "--qdl_weight", "0.01"],  # DL-DKD's two Holmes branches, KD
    # the word-frame score and the samples' MIL and VIB (whole batch, replicated; the noise drawn for the whole
    # batch from the shared stream), MIL / VIB raised from 4e-3 / 2.5e-4
    "ral": ["--recipe", "ral", "--qdl_weight", "0.01", "--mil_weight", "0.1", "--vib_weight", "0.01"],
    "dldkd_ral": ["--student", "ral", "--mil_weight", "0.1"],  # DL-DKD's two RAL branches, KD over the clips
    # --robust_alignment on DL-DKD's own student: each branch's Gaussians from its tokens and frames (video_outputs
    # gathered along the videos), MIL / VIB over the whole batch (replicated), raised from 4e-3 / 2.5e-4; KD
    "dldkd_ra": ["--robust_alignment", "--mil_weight", "0.1", "--vib_weight", "0.01"],
    # the dual-query variant: its token-wise frame level reads the gathered tokens (query_outputs); dc weighs in
    "holmes_dual": ["--recipe", "holmes_dual", "--qdl_weight", "0.01", "--intra_edl_weight", "0.5", "--edl_weight",
                    "0.2", "--dc_weight", "0.3"],
}
# Cases compared in float64. GMMFormerV2's fusion heads (weight_token, ca, layer1, layer2 of a DyGMM block) get
# gradients only through the differences between the Gaussian branches (the fusion softmax runs over them), and
# at initialisation the branches' tokens differ by about 0.1 %, so these gradients are 1e-12..1e-7 of the largest:
# float32 rounding of the terms that cancel leaves them relative errors of 1e-3 and more, float64 below 1e-5.
FLOAT64 = {"gmmformer_v2", "dldkd_gmmformer_v2", "holmes", "dldkd_holmes", "ral", "dldkd_ral", "holmes_dual"}


def free_port() -> int:
    """A free TCP port on localhost for a spawned group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def case_options(case: str):
    """The resolved training flags of ``case``."""
    return parse_train_args([*TINY, *CASES[case]])


def global_batch_items(n_videos: int, seed: int, max_captions: int = 3, sort_by: str = "captions",
                       teacher: bool = True, n_clips=None, teacher_clips: bool = False) -> list:
    """TrainDataset-like items, sorted as a global batch is (``sort_by``): lengths and counts vary.

    Each video has 1 to ``max_captions`` captions; ``n_clips`` adds the
    student's clips (and ``teacher_clips`` the teacher's) pooled from the frames.
    """
    g = np.random.default_rng(seed)
    items = []
    for v in range(n_videos):
        n, caps = int(g.integers(2, 9)), int(g.integers(1, max_captions + 1))
        item = {"video_id": f"v{v}", "cap_ids": [f"v{v}#{j}" for j in range(caps)],
                "video_feat": g.standard_normal((n, DV)).astype(np.float32),
                "query_feats": [g.standard_normal((int(g.integers(2, 7)), DQ)).astype(np.float32)
                                for _ in range(caps)]}
        frames, sentences = g.standard_normal((n, DT)).astype(np.float32), g.standard_normal((caps, DT))
        if n_clips:
            item["clip_feat"] = clip_features(item["video_feat"], n_clips)
        if teacher:
            item.update(teacher_video_feat=frames, teacher_query_feat=sentences.astype(np.float32))
            if teacher_clips:
                item["teacher_clip_feat"] = clip_features(frames, n_clips, normalize=False)
        items.append(item)
    return sorted(items, key=lambda it: -sort_key(it, sort_by))


def noise_only(model: DLDKD) -> set:
    """Parameters whose gradient is 0 in exact arithmetic, so that they carry only rounding noise.

    - the key biases of attention whose logits are not multiplied by a Gaussian
      (DL-DKD's blocks; a GMM block's attn0, the GMMFormer query encoders,
      GMMFormerV2's cross-attention ``ca``): a key bias adds the same value to
      every logit of a query's softmax row;
    - the bias of a DyGMM block's (GMMFormerV2's or Holmes') fusion head ``layer2``: it adds the same logit
      to every Gaussian branch at a position, and the fusion softmax runs over
      the branches;
    - the bias of the token-weight logit (``text_weight_fc.2``: RAL's confidences, the dual-query Holmes'
      token weights): the weights are a softmax over a caption's tokens;
    - the fusion head's ``layer1`` bias and the bias of ``ca.norm2`` (the token
      that feeds ``layer1``): their gradients are the softmax's per-position
      gradients summed over the branches (0), as long as ``layer1``'s ReLU is
      active on the same units for every branch, which holds while the
      branches' tokens are as alike as at initialisation.

    A Gaussian-weighted key bias (attn1..) adds G[i, j] times a constant, which
    differs along the row: its gradient is not 0.
    """
    names = set()
    for prefix, module in model.named_modules():
        plain = isinstance(module, GaussianSelfAttention) and module.width is None
        if isinstance(module, SelfAttentionCore) or plain:
            names.add(f"{prefix}.key.bias")
        elif isinstance(module, (DyGMMBlock, HolmesDyGMMBlock)):
            names.update(f"{prefix}.{p}.bias" for p in ("layer1", "layer2", "ca.norm2"))
        elif prefix.split(".")[-1] == "text_weight_fc":  # the token-weight head's last bias
            names.add(f"{prefix}.2.bias")
    return names


def run_steps(d: distributed.Dist, case: str, steps) -> dict:
    """Train steps on global batches ``steps`` [(videos, max captions per video)]; returns the global terms,
    gradients, weights, the noise-only parameter names and each batch's caption counts."""
    opt = case_options(case)
    dtype = torch.float64 if case in FLOAT64 else torch.float32
    rng.set_seed(0)
    model = DLDKD(model_config(opt, DV, DQ)).to(dtype)
    forward = distributed.data_parallel(model, torch.device("cpu")) if d.enabled else model
    optimizer, scheduler = build_optimizer(model, "bertadam", 1e-3, 0.01, total_steps=20, warmup=0.1)
    teacher = not opt.no_teacher
    loss_fn = loss_settings(opt).build()
    run = loop.Run(model=model, forward=forward, loader=None, optimizer=optimizer, scheduler=scheduler,
                    loss_fn=loss_fn, teacher=PrecomputedTeacher() if teacher else None, dist=d,
                    sampling=rng.sampling_generator(torch.device("cpu")) if d.enabled else None,
                    second_queries=loss_fn.objective.needs_second_queries)
    settings = {"kd_factor": 0.1 if teacher else 0.0, "hard_negative": True, "warmup_end": True}
    if opt.label_style == "soft":
        settings.update(alpha=0.6, beta=0.7)
    n_clips = opt.map_size if model.needs_clips else None
    teacher_clips = bool(n_clips) and teacher and opt.kd_level == "clip"
    dims = (DV, DQ, DT if teacher else None, n_clips, teacher_clips)
    out = {"terms": [], "grads": [], "noise_only": sorted(noise_only(model)), "caption_counts": []}
    for step, (n_videos, max_captions) in enumerate(steps):
        items = global_batch_items(n_videos, step, max_captions, opt.batch_sort, teacher, n_clips, teacher_clips)
        out["caption_counts"].append([len(it["cap_ids"]) for it in items])
        local = collate_train(share(items, d.rank, d.world), dims=dims, sort_by=opt.batch_sort)
        local = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in local.items()}
        terms = loop.train_step(run, local, settings)
        out["terms"].append({k: d.all_reduce_sum(v.detach().clone()).item() for k, v in terms.items()})
        out["grads"].append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    out["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


def spawn_worker(rank: int, world: int, port: int, folder: str, jobs) -> None:
    """torch.multiprocessing.spawn target: join a gloo group on localhost, run the steps of each job
    ``(case, steps)`` and save each result as ``<case>-rank<rank>.pt``."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    d, _ = distributed.setup(torch.device("cpu"), timeout_minutes=2)
    try:
        for case, steps in jobs:
            torch.save(run_steps(d, case, steps), os.path.join(folder, f"{case}-rank{rank}.pt"))
    finally:
        d.close()
