"""What a model retrieves and where: the top-k videos of chosen queries, each with its matching moment.

    python -m method.explore RUN_DIR [--split test] [--worst 5 | --best 5 | --sample 5 | --cap_ids ID ... |
                                      --cap_file FILE] [--top_k 5] [--fps F] [--moments FILE] [--jsonl OUT]

For each chosen caption: its true video's rank by every score the model
reports (``DLDKD.named_scores``: fused, per branch, per level), the top-k
videos with those scores, and in each a moment estimate (the rule of
``method.analysis.moments``, on the fused per-position curve of the student's
positional level: frames, or GMMFormer's 32 clips, converted to stored frames
by fraction).
Where a ground-truth moments file exists (``method.data.moment_file``) it also
prints the moment evaluation over all captions of the split: mean IoU and
R@1 at IoU 0.3 / 0.5 / 0.7 of the estimate in the true video, next to the
expected IoU of a random span of the same length. Writes one JSON line per
chosen caption (default ``RUN_DIR/explore_<split>.jsonl``) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from method.analysis.moments import estimate_moments, interval_iou, moment_metrics, random_span_iou
from method.analysis.retrieval import (
    EncodedSplit,
    Run,
    add_run_args,
    all_ranks,
    encode_split,
    load_run,
    open_split,
    pair_curves,
    stored_frame_counts,
    video_scores,
)
from method.common.cli import HelpFormatter
from method.data import DataError, Split, read_caption_file
from method.data.moment_file import check_known, moment_fractions, moments_path, read_moments


@dataclass
class Analysis:
    """A run on one split: every caption's ranks and the moment estimate in its true video."""

    run: Run
    split: Split
    enc: EncodedSplit
    ranks: dict[str, torch.Tensor]  # score name -> (Q,) 1-based rank of the true video
    moment: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (start, end, peak) (Q,) positions in the true video
    stored_frames: np.ndarray  # (V,) frames as stored (before pooling)
    gt: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # (start, end) fractions (Q,), known (Q,) bool
    threshold: float

    def iou(self) -> torch.Tensor:
        """(Q,) IoU of the estimate with the ground truth in the true video (NaN without ground truth)."""
        start, end, _ = self.moment
        n = self.enc.n_frames[self.enc.query_video].cpu().double()
        gs, ge, _ = self.gt
        return interval_iou(start / n, end / n, torch.from_numpy(gs), torch.from_numpy(ge))

    def moment_evaluation(self) -> dict | None:
        """Moment metrics of the estimate and the random-span baseline over captions with ground truth."""
        if self.gt is None:
            return None
        known = torch.from_numpy(self.gt[2])
        if not bool(known.any()):
            return None
        start, end, _ = self.moment
        n = self.enc.n_frames[self.enc.query_video].cpu()
        baseline = random_span_iou((end - start)[known], n[known], torch.from_numpy(self.gt[0])[known],
                                   torch.from_numpy(self.gt[1])[known])
        return {"estimate": moment_metrics(self.iou()[known]), "random_span_miou": 100.0 * float(baseline.mean())}


def resolve_moments_file(run: Run, given: str | None) -> str | None:
    """--moments when given (it must exist), else the collection's default file if present."""
    if given:
        return given
    default = moments_path(run.opt.root_path, run.opt.collection)
    return default if os.path.isfile(default) else None


def load_ground_truth(path: str, split: Split, enc: EncodedSplit, stored_frames: np.ndarray):
    """Ground-truth fractions of the split's captions from a moments file (see ``moment_fractions``)."""
    moments = read_moments(path)
    known_ids = list(enc.cap_ids)
    for other in ("train", "val", "test"):
        caption_file = split.paths.captions[other]
        if other != split.name and os.path.isfile(caption_file):
            known_ids += read_caption_file(caption_file).cap_ids
    check_known(moments, known_ids, path)
    return moment_fractions(moments, enc.cap_ids, stored_frames[enc.query_video.cpu().numpy()], path)


def analyse(run: Run, split_name: str, moments_file: str | None = None, threshold: float = 0.5) -> Analysis:
    """Encode the split, rank every caption's video and estimate its moment there."""
    split = open_split(run, split_name)
    enc = encode_split(run, split)
    ranks = all_ranks(run, enc)
    own = pair_curves(run, enc, torch.arange(len(enc.cap_ids), device=run.device), enc.query_video)["fused"]
    moment = estimate_moments(own, enc.mask[enc.query_video], threshold)
    stored = stored_frame_counts(split, enc.video_ids)
    path = resolve_moments_file(run, moments_file)
    try:
        gt = None if path is None else load_ground_truth(path, split, enc, stored)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    return Analysis(run, split, enc, {k: v.cpu() for k, v in ranks.items()},
                    tuple(t.cpu() for t in moment), stored, gt, threshold)


def select_queries(an: Analysis, cap_ids=None, cap_file=None, sample=None, worst=None, best=None,
                   seed: int = 0) -> list[int]:
    """Indices of the chosen captions: given ids, ids from a file, a random sample, or the worst / best ranked."""
    index = {c: i for i, c in enumerate(an.enc.cap_ids)}
    if cap_file:
        if not os.path.isfile(cap_file):
            raise SystemExit(f"--cap_file {cap_file}: no such file (one caption id a line)")
        with open(cap_file, encoding="utf-8") as f:
            cap_ids = [line.split()[0] for line in f if line.strip() and not line.startswith("#")]
    if cap_ids:
        unknown = [c for c in cap_ids if c not in index]
        if unknown:
            source = f"--cap_file {cap_file}" if cap_file else "--cap_ids"
            raise SystemExit(f"{source}: {len(unknown)} ids are no caption of the {an.split.name} split "
                             f"({an.split.captions.path}); first {unknown[0]!r}")
        return [index[c] for c in cap_ids]
    fused = an.ranks["fused"]
    if worst or best:
        order = torch.sort(fused, descending=bool(worst), stable=True).indices
        return order[: worst or best].tolist()
    n = min(sample or 0, len(fused))
    return sorted(np.random.default_rng(seed).choice(len(fused), n, replace=False).tolist())


def _span(start: float, end: float, n: int, stored: int, fps: float | None, peak: int | None = None) -> dict:
    """A span [start, end) (and peak position) of n model positions in stored frames, and in seconds with fps.

    Position i of n covers [i / n, (i + 1) / n) of the video (pooled frames,
    or clips), so it is frames [i s, (i + 1) s) of the stored ones, s =
    stored / n. ``peak_frame`` is the stored frame at the peak position's centre.
    """
    stored, scale = int(stored), float(stored) / float(n)
    out = {"start_frame": round(start * scale, 3), "end_frame": round(end * scale, 3), "n_frames": stored}
    if peak is not None:
        out["peak_frame"] = int((peak + 0.5) * scale)
    if fps:
        out["start_s"], out["end_s"] = round(out["start_frame"] / fps, 3), round(out["end_frame"] / fps, 3)
    return out


def query_records(an: Analysis, indices: list[int], top_k: int = 5, fps: float | None = None) -> list[dict]:
    """One dict per chosen caption: text, true video and its ranks, moment vs ground truth, the top-k videos."""
    enc, run = an.enc, an.run
    if not indices:
        return []
    rows = torch.tensor(indices, device=run.device)
    scores = video_scores(run, enc, rows)
    k = min(top_k, len(enc.video_ids))
    top = torch.sort(scores["fused"], dim=1, descending=True, stable=True).indices[:, :k]  # (R, k)
    curves = pair_curves(run, enc, rows.repeat_interleave(k), top.reshape(-1))
    start, end, peak = estimate_moments(curves["fused"], enc.mask[top.reshape(-1)], an.threshold)
    n_model = enc.n_frames.cpu().numpy()
    iou = an.iou() if an.gt is not None else None
    records = []
    for r, q in enumerate(indices):
        vid = int(enc.query_video[q])
        own = [int(t[q]) for t in an.moment]
        record = {
            "cap_id": enc.cap_ids[q], "caption": an.split.captions.captions[enc.cap_ids[q]],
            "video_id": enc.video_ids[vid], "rank": {name: int(rk[q]) for name, rk in an.ranks.items()},
            "moment": _span(own[0], own[1], n_model[vid], an.stored_frames[vid], fps, own[2]),
            "gt_moment": None, "iou": None, "top": []}
        if an.gt is not None and an.gt[2][q]:
            stored = an.stored_frames[vid]
            record["gt_moment"] = _span(float(an.gt[0][q]) * stored, float(an.gt[1][q]) * stored, stored, stored, fps)
            record["iou"] = round(float(iou[q]), 4)
        for j in range(k):
            v, p = int(top[r, j]), r * k + j
            record["top"].append({
                "rank": j + 1, "video_id": enc.video_ids[v], "true": v == vid,
                "score": {name: round(float(s[r, v]), 5) for name, s in scores.items()},
                "moment": _span(int(start[p]), int(end[p]), n_model[v], an.stored_frames[v], fps, int(peak[p]))})
        records.append(record)
    return records


def _fmt_span(m: dict) -> str:
    text = f"frames [{m['start_frame']:g}, {m['end_frame']:g})"
    return text + (f" ({m['start_s']:.1f}-{m['end_s']:.1f} s)" if "start_s" in m else "")


def short_name(score: str) -> str:
    """Column label of a score name: inheritance -> inh, exploration_clip -> exp_clip, clip -> clip."""
    return "_".join({"inheritance": "inh", "exploration": "exp"}.get(part, part) for part in score.split("_"))


def format_records(records: list[dict], names: list[str]) -> str:
    """Readable text of the records: per caption a header and a table of its top-k videos.

    ``names``: the scores besides the fused one (``DLDKD.score_names``), one column each.
    """
    labels = {name: short_name(name) for name in names}
    width = {name: max(6, len(label)) for name, label in labels.items()}
    lines = []
    for i, rec in enumerate(records, 1):
        ranks = ", ".join(f"{labels[name]} {rec['rank'][name]}" for name in names)
        lines.append(f"[{i}] {rec['cap_id']}  \"{rec['caption']}\"")
        lines.append(f"    true video {rec['video_id']}: rank {rec['rank']['fused']} ({ranks}); "
                     f"moment {_fmt_span(rec['moment'])}"
                     + (f", truth {_fmt_span(rec['gt_moment'])}, IoU {rec['iou']:.2f}" if rec["gt_moment"] else ""))
        vid = max(len(t["video_id"]) for t in rec["top"])
        lines.append(f"    {'rank':>4}  {'video':<{vid}}  {'fused':>6}  "
                     + "  ".join(f"{labels[name]:>{width[name]}}" for name in names) + "  moment")
        for t in rec["top"]:
            mark = "*" if t["true"] else " "
            lines.append(f"  {mark} {t['rank']:>4}  {t['video_id']:<{vid}}  {t['score']['fused']:6.3f}  "
                         + "  ".join(f"{t['score'][name]:{width[name]}.3f}" for name in names)
                         + f"  {_fmt_span(t['moment'])}")
        lines.append("")
    return "\n".join(lines)


def format_moment_evaluation(ev: dict, threshold: float) -> str:
    m = ev["estimate"]
    return (f"moments of the true videos ({m['n']} captions with ground truth, rule threshold {threshold:g}): "
            f"mIoU {m['miou']:.1f}, R@1 IoU>=0.3 {m['r1_iou0.3']:.1f}, IoU>=0.5 {m['r1_iou0.5']:.1f}, "
            f"IoU>=0.7 {m['r1_iou0.7']:.1f}; a random span of the same length: mIoU {ev['random_span_miou']:.1f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m method.explore", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("model_dir", help="run folder (or released checkpoint folder) with model.ckpt and opt.json")
    add_run_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--cap_ids", nargs="+", help="caption ids to look at")
    which.add_argument("--cap_file", help="file of caption ids, one a line (e.g. a caption file)")
    which.add_argument("--sample", type=int, default=5,
                       help="a random sample of this many captions (the default selection: 5)")
    which.add_argument("--worst", type=int, help="the captions whose true video ranks lowest (fused score)")
    which.add_argument("--best", type=int, help="the captions whose true video ranks highest (fused score)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--top_k", type=int, default=5, help="videos listed per caption")
    p.add_argument("--jsonl", default=None, help="output JSON lines (default RUN_DIR/explore_<split>.jsonl)")
    return p


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    run = load_run(args.model_dir, args.root_path, args.collection, args.device, args.num_workers)
    an = analyse(run, args.split, args.moments, args.moment_threshold)
    chosen = select_queries(an, args.cap_ids, args.cap_file, args.sample, args.worst, args.best, args.seed)
    records = query_records(an, chosen, args.top_k, args.fps)
    out = Path(args.jsonl) if args.jsonl else run.path / f"explore_{args.split}.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    print(format_records(records, [name for name in run.model.score_names() if name != "fused"]))
    evaluation = an.moment_evaluation()
    if evaluation:
        print(format_moment_evaluation(evaluation, an.threshold))
    print(f"wrote {len(records)} JSON lines to {out}")
    return records


if __name__ == "__main__":
    main()
