"""RAL on GMMFormerV2 on one GPU: golden parity in float32 (TF32 off), a TVR-size training step, TVR-size evaluation.

    python bench/ral_gpu_check.py                    # one GPU, a few minutes
    python bench/ral_gpu_check.py --device cpu --tiny

One JSON line per check:

- ``env``: device, torch, CUDA.
- ``parity``: the golden tiny model (tests/golden/ral_golden.npz) on the device, float32, TF32 off, the stored
  noise: max relative deviation of the eval scores, the loss and every gradient (README tolerance 1e-5).
- ``step_<fp32|tf32|bf16>``: forward + RAL objective + backward + BertAdam step at TVR sizes (128 videos x 128
  frames x 3072-d, 640 captions x 30 tokens x 768-d): median seconds of 5 steps after 2 warm-ups, peak memory.
- ``word_frame``: the word-frame score alone at TVR training size (both forms, forward + backward).
- ``eval``: TVR test size (2,179 videos, 10,895 captions): encode videos in groups of 100, score caption
  batches of 50 against all videos (S_c, S_f): seconds and peak memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from method.losses.ral import ral_objective  # noqa: E402
from method.models.students.ral import RALConfig, RALStudent  # noqa: E402
from method.training.optim import build_optimizer  # noqa: E402


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def rel(a: torch.Tensor, ref: np.ndarray) -> float:
    a = a.detach().double().cpu().numpy()
    ref = np.asarray(ref, dtype=np.float64)
    return float((np.abs(a - ref) / np.maximum(1.0, np.abs(ref))).max())


def parity(device) -> None:
    g = np.load(REPO / "tests" / "golden" / "ral_golden.npz")
    t = lambda k, dt=torch.float32: torch.from_numpy(np.array(g[k])).to(device, dt)  # noqa: E731
    cfg = RALConfig(visual_input_size=16, query_input_size=12, hidden_size=8, n_heads=2, input_drop=0.0, drop=0.0,
                    sft_factor=0.6, hard_pool_size=1)
    student = RALStudent(cfg).to(device)
    student.load_state_dict({k[6:]: t(k) for k in g.files if k.startswith("model/")})
    batch = [t(k) for k in ("tiny_frame_video_features", "tiny_videos_mask", "tiny_text_feat", "tiny_text_mask",
                            "tiny_clip_video_features")] + [t("tiny_text_labels", torch.long)]
    frames, mask, text, tmask, clips, labels = batch
    with torch.no_grad():
        v = student.eval().encode_video(frames, mask, clips)
        s = student.scores(student.encode_query(text, tmask), student.encode_tokens(text, tmask), tmask, v["clip"],
                           v["frame"], mask)
    devs = {"eval_scores": max(rel(s[a], g[f"tiny_eval_{b}"]) for a, b in
                               (("clip_cos", "scores_clip"), ("frame_cos", "scores_frame"), ("clip_raw", "dot_clip"),
                                ("frame_raw", "dot_frame")))}
    out = student.train().train_forward(*batch, eps_text=t("tiny_eps_text"), eps_video=t("tiny_eps_video"))
    loss = sum(ral_objective(out, labels, cfg, hard_negative=True).values())
    loss.backward()
    devs["loss"] = rel(loss, g["tiny_loss_total"])
    devs["grads"] = max(rel(p.grad, g["tiny_grad/" + n]) for n, p in student.named_parameters())
    emit(check="parity", ok=max(devs.values()) <= 1e-5, tolerance=1e-5, **devs)


def tvr_batch(device, v=128, q=640, frames=128, tokens=30, dv=3072, dq=768, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min(8, frames), frames + 1, (v,), generator=gen).sort(descending=True).values
    lengths[0] = frames
    mask = (torch.arange(frames)[None] < lengths[:, None]).float()
    feat = torch.nn.functional.normalize(torch.randn(v, frames, dv, generator=gen), dim=-1) * mask[..., None]
    n_tok = torch.randint(min(5, tokens), tokens + 1, (q,), generator=gen)
    n_tok[0] = tokens
    tmask = (torch.arange(tokens)[None] < n_tok[:, None]).float()
    text = torch.nn.functional.normalize(torch.randn(q, tokens, dq, generator=gen), dim=-1) * tmask[..., None]
    clips = torch.nn.functional.normalize(torch.randn(v, 32, dv, generator=gen), dim=-1)
    labels = torch.arange(v).repeat_interleave(q // v)
    return [x.to(device) for x in (feat, mask, text, tmask, clips, labels)]


def step(device, variant: str, tiny: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = variant == "tf32"
    torch.backends.cudnn.allow_tf32 = variant == "tf32"
    torch.manual_seed(0)
    cfg = RALConfig.for_collection("tvr")
    sizes = dict(v=8, q=40, dv=64, dq=32) if tiny else {}
    if tiny:
        cfg = RALConfig.for_collection("tvr", visual_input_size=64, query_input_size=32, hidden_size=32)
    student = RALStudent.from_config(cfg).to(device).train()
    batch = tvr_batch(device, **sizes)
    optimizer, scheduler = build_optimizer(student, "bertadam", cfg.lr, cfg.weight_decay, total_steps=1000)
    gen = torch.Generator(device=device).manual_seed(1)
    times, losses = [], []
    reset_peak(device)
    for i in range(7):
        sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bf16"):
            out = student.train_forward(*batch, generator=gen)
        terms = ral_objective(out, batch[5], cfg, hard_negative=True, generator=gen)
        loss = sum(v.float() for v in terms.values())
        loss.backward()
        optimizer.step()
        scheduler.step()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
        losses.append(round(loss.item(), 5))
    emit(check=f"step_{variant}", ok=all(np.isfinite(losses)), median_s=round(statistics.median(times), 4),
         peak_gb=peak_gb(device), losses=losses, terms={k: round(v.item(), 5) for k, v in terms.items()})


def word_frame(device, tiny: bool) -> None:
    from method.models.students.ral import confidence_head, word_frame_pair
    torch.backends.cuda.matmul.allow_tf32 = False
    q, v, lt, p, d = (40, 8, 30, 128, 32) if tiny else (640, 128, 30, 128, 384)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(q, lt, d, generator=gen).to(device).requires_grad_()
    frames = torch.randn(v, p, d, generator=gen).to(device).requires_grad_()
    tmask = torch.ones(q, lt, device=device)
    fmask = torch.ones(v, p, device=device)
    head = confidence_head(d).to(device)
    times = []
    reset_peak(device)
    for i in range(5):
        sync(device)
        start = time.perf_counter()
        wf = word_frame_pair(tokens, tmask, frames, fmask, head)
        (wf["cos"].sum() + wf["raw"].sum()).backward()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    emit(check="word_frame", ok=True, median_s=round(statistics.median(times), 4), peak_gb=peak_gb(device),
         shape=[q, lt, v, p])


@torch.no_grad()
def evaluate(device, tiny: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    n_v, n_q = (30, 120) if tiny else (2179, 10895)
    cfg = RALConfig.for_collection("tvr")
    if tiny:
        cfg = RALConfig.for_collection("tvr", visual_input_size=64, query_input_size=32, hidden_size=32)
    student = RALStudent.from_config(cfg).to(device).eval()
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    clip_feat, frame_feat, masks = [], [], []
    for a in range(0, n_v, 100):
        n = min(100, n_v - a)
        f, m, _, _, c, _ = tvr_batch(device, v=n, q=n, dv=cfg.visual_input_size, dq=cfg.query_input_size, seed=a)
        out = student.encode_video(f, m, c)
        clip_feat.append(out["clip"])
        frame_feat.append(out["frame"])
        masks.append(m)
    clip_feat, frame_feat, masks = torch.cat(clip_feat), torch.cat(frame_feat), torch.cat(masks)
    sync(device)
    video_s = time.perf_counter() - start
    best = torch.zeros(n_q, device=device)
    for a in range(0, n_q, 50):
        n = min(50, n_q - a)
        _, _, text, tmask, _, _ = tvr_batch(device, v=1, q=n, frames=2, dv=4, dq=cfg.query_input_size, seed=a)
        s = student.inference_scores(student.encode_query(text, tmask), student.encode_tokens(text, tmask), tmask,
                                     clip_feat, frame_feat, masks)
        best[a:a + n] = s["fused"].amax(dim=1)
    sync(device)
    emit(check="eval", ok=bool(torch.isfinite(best).all()), videos=n_v, queries=n_q, video_s=round(video_s, 2),
         total_s=round(time.perf_counter() - start, 2), peak_gb=peak_gb(device))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="the device checked against the CPU (cuda; cpu checks the harness)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (harness check on the CPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    emit(check="env", device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
         torch=torch.__version__, cuda=torch.version.cuda)
    failed = []
    checks = [("parity", lambda: parity(device))]
    checks += [(f"step_{v}", lambda v=v: step(device, v, args.tiny)) for v in ("fp32", "tf32", "bf16")]
    checks += [("word_frame", lambda: word_frame(device, args.tiny)), ("eval", lambda: evaluate(device, args.tiny))]
    for name, fn in checks:
        try:
            fn()
        except Exception as exc:  # report and go on
            failed.append(name)
            emit(check=name, ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    emit(check="summary", ok=not failed, failed=failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
