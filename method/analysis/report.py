"""A static HTML report of a run, optionally against another run.

    python -m method.report RUN_DIR [--compare OTHER_RUN_DIR] --out DIR [--split test] [--panels 6]

Writes ``DIR/index.html`` and its figures in ``DIR/img/`` (opens from disk, no
server): the metrics tables of every ``eval_<split>.json`` of the run (t2v and
v2t, every named score: fused, per branch, per level), the training curves of
``metrics.csv``, the rank distribution on ``--split``, the moment evaluation
where ground-truth moments exist, and query panels (caption, top-k videos,
per-position score curves of the branches and of the teacher where its
features exist, on the student's positional level: frames, or GMMFormer's
clips; the student's other level as steps; estimated and true moments).
With ``--compare``: the other run's tables and curves beside, the captions
whose rank moved most and a histogram of rank changes. Needs matplotlib
(``requirements-report.txt``).
"""
from __future__ import annotations

import argparse
import csv
import html
import json
from pathlib import Path

import numpy as np
import torch

from method.analysis import plots
from method.analysis.explore import Analysis, analyse, query_records, select_queries
from method.analysis.moments import estimate_moments
from method.analysis.retrieval import Run, TeacherCurves, add_run_args, load_run, pair_curves
from method.common.cli import HelpFormatter

METRIC_COLUMNS = (("R@1", "r1"), ("R@5", "r5"), ("R@10", "r10"), ("R@100", "r100"), ("SumR", "sumr"),
                  ("MedR", "medr"), ("MnR", "meanr"), ("mAP", "map"))
OPT_SHOWN = ("recipe", "student", "kd_level", "collection", "visual_feature", "label_style", "no_teacher",
             "single_branch", "separate_query_proj", "pool_to_teacher", "kd_schedule",
             "kd_k", "loss_scale_weight", "optim", "lr", "bsz", "n_epoch", "hidden_size", "margin", "seed")
STYLE = """body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.4em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}tr.true td{background:#e6f4e6}img{max-width:100%}
.panel{border:1px solid #ddd;padding:.6em;margin:1em 0}.caption{font-size:1.1em;font-weight:bold}
.muted{color:#666;font-size:.9em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}"""


def eval_results(run: Run) -> dict[str, dict]:
    """{split: eval_<split>.json} of a run; SystemExit when it has none."""
    found = {p.stem[len("eval_"):]: p for p in sorted(run.path.glob("eval_*.json"))}
    if not found:
        raise SystemExit(f"{run.path}: no eval_<split>.json; evaluate the run first: "
                         f"python -m method.eval --model_dir {run.path} --eval_split test")
    out = {}
    for split, path in found.items():
        try:
            out[split] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: not JSON ({e})") from None
        if not isinstance(out[split], dict) or not {"t2v", "v2t"} <= set(out[split]):
            raise SystemExit(f"{path}: not an evaluation result of method.eval (no t2v / v2t metrics)")
    return out


def read_metrics_csv(run: Run) -> list[dict] | None:
    """Rows of the run's metrics.csv, or None (a released checkpoint has none)."""
    path = run.path / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(key: str, value: float) -> str:
    return f"{value:.3f}" if key == "map" else f"{value:.1f}"


def metrics_table(rows: dict[str, dict]) -> str:
    """HTML table, one row per named metrics dict (fused, branches)."""
    head = "<tr><th class=l></th>" + "".join(f"<th>{h}</th>" for h, _ in METRIC_COLUMNS) + "</tr>"
    body = "".join(f"<tr><td class=l>{html.escape(name)}</td>"
                   + "".join(f"<td>{_fmt(k, m[k])}</td>" for _, k in METRIC_COLUMNS if k in m) + "</tr>"
                   for name, m in rows.items())
    return f"<table>{head}{body}</table>"


def results_section(label: str, run: Run, results: dict[str, dict]) -> str:
    """A run's main flags and its t2v / v2t tables of every evaluated split."""
    opt = vars(run.opt)
    flags = ", ".join(f"<code>{k}={html.escape(str(opt[k]))}</code>" for k in OPT_SHOWN if k in opt)
    parts = [f"<h3>{html.escape(label)}</h3><p class=muted>{html.escape(str(run.path))}; {flags}</p>"]
    for split, res in results.items():
        parts.append(f"<p><b>{split}</b>: {res.get('n_queries')} queries, {res.get('n_videos')} videos, "
                     f"checkpoint epoch {res.get('checkpoint_epoch')}</p>")
        parts.append("<p>text-to-video</p>" + metrics_table(res["t2v"]))
        parts.append("<p>video-to-text</p>" + metrics_table(res["v2t"]))
    return "".join(parts)


def moments_section(analyses: dict[str, Analysis]) -> str:
    """Moment evaluation of each run (estimate vs random span), or a note without ground truth."""
    rows = {label: an.moment_evaluation() for label, an in analyses.items()}
    if not any(rows.values()):
        return ("<p class=muted>No ground-truth moments file for this split (see --moments), so the moment "
                "estimates are not evaluated.</p>")
    head = ("<tr><th class=l>run</th><th>captions</th><th>mIoU</th><th>R@1 IoU&ge;0.3</th><th>R@1 IoU&ge;0.5</th>"
            "<th>R@1 IoU&ge;0.7</th><th>random span mIoU</th></tr>")
    body = "".join(
        f"<tr><td class=l>{html.escape(label)}</td><td>{ev['estimate']['n']}</td>"
        + "".join(f"<td>{ev['estimate'][k]:.1f}</td>" for k in ("miou", "r1_iou0.3", "r1_iou0.5", "r1_iou0.7"))
        + f"<td>{ev['random_span_miou']:.1f}</td></tr>" for label, ev in rows.items() if ev)
    threshold = next(iter(analyses.values())).threshold
    return (f"<p>Estimated moment in the true video (peak of the fused per-position curve: frames, or a GMMFormer "
            f"student's 32 clips; extended while the score "
            f"stays above median + {threshold:g} &times; (peak &minus; median)) against the ground truth; the "
            f"baseline is the expected IoU of a span of the same length placed at random.</p>"
            f"<table>{head}{body}</table>")


def curve_names(model, level: str) -> dict[str, str]:
    """{key of ``pair_curves``: legend name} of the curves of ``level``.

    A one-level student (DL-DKD): the branches and "fused". A student with
    levels: the level's score name (``clip``) with one branch; with two,
    ``<branch>_<level>`` and ``fused_<level>``.
    """
    keys = (*model.branch_names, "fused")
    if len(model.levels) == 1:
        return {key: key for key in keys}
    if model.cfg.single_branch:
        return {"fused": level}
    return {key: f"{key}_{level}" for key in keys}


def panel_figure(an: Analysis, q: int, record: dict, teacher: TeacherCurves, out: Path) -> None:
    """Curves of caption q on its true video and, when another video ranks first, on that one.

    On the positions of the curve level (frames, or GMMFormer's clips); the
    fused curve of a student's other level is drawn as steps over them.
    """
    enc, run = an.enc, an.run
    level = enc.curve_level
    true_v = int(enc.query_video[q])
    first = enc.video_ids.index(record["top"][0]["video_id"])
    videos = [true_v] + ([first] if first != true_v else [])
    v_idx = torch.tensor(videos, device=run.device)
    q_idx = torch.full_like(v_idx, q)
    curves = pair_curves(run, enc, q_idx, v_idx)
    steps = {curve_names(run.model, lv)["fused"]: pair_curves(run, enc, q_idx, v_idx, level=lv)["fused"]
             for lv in run.model.levels if lv != level}
    start, end, _ = estimate_moments(curves["fused"], enc.mask[v_idx], an.threshold)
    names = curve_names(run.model, level)
    panel = {"caption": f"\"{record['caption']}\"", "videos": []}
    for i, v in enumerate(videos):
        n = int(enc.n_frames[v])
        lines = {name: curves[key][i, :n].cpu().numpy() for key, name in names.items()}
        t = teacher.curve(enc.cap_ids[q], enc.video_ids[v], n, level)
        if t is not None:
            lines["teacher"] = t
        truth = None
        if v == true_v and an.gt is not None and an.gt[2][q]:
            truth = (float(an.gt[0][q]) * n, float(an.gt[1][q]) * n)
        title = (f"true video {enc.video_ids[v]} (rank {record['rank']['fused']})" if v == true_v
                 else f"top-1 video {enc.video_ids[v]}")
        panel["videos"].append({
            "title": title, "xlabel": "frame" if level == "frame" else f"{level} ({n} per video)", "curves": lines,
            "main": names["fused"], "steps": {name: c[i].cpu().numpy() for name, c in steps.items()},
            "estimate": (int(start[i]), int(end[i])), "truth": truth})
    plots.query_panel(panel, out)


def _span_text(m: dict | None) -> str:
    if not m:
        return ""
    text = f"[{m['start_frame']:g}, {m['end_frame']:g}) of {m['n_frames']}"
    return text + (f" ({m['start_s']:.1f}&ndash;{m['end_s']:.1f} s)" if "start_s" in m else "")


def panel_html(record: dict, image: str, names: list[str], other: tuple[str, int] | None) -> str:
    """A query panel: caption, ranks (and the compared run's fused rank), moments, top-k table, figure.

    ``names``: the scores besides the fused one, one column each.
    """
    ranks = ", ".join(f"{b} {record['rank'][b]}" for b in names)
    vs = f"; rank in {html.escape(other[0])}: {other[1]}" if other is not None else ""
    moment = f"estimated moment {_span_text(record['moment'])}"
    if record["gt_moment"]:
        moment += f", true moment {_span_text(record['gt_moment'])}, IoU {record['iou']:.2f}"
    head = ("<tr><th>rank</th><th class=l>video</th><th>fused</th>" + "".join(f"<th>{b}</th>" for b in names)
            + "<th class=l>estimated moment (frames)</th></tr>")
    body = "".join(
        f"<tr{' class=true' if t['true'] else ''}><td>{t['rank']}</td><td class=l>{html.escape(t['video_id'])}"
        f"{' (true)' if t['true'] else ''}</td><td>{t['score']['fused']:.3f}</td>"
        + "".join(f"<td>{t['score'][b]:.3f}</td>" for b in names)
        + f"<td class=l>{_span_text(t['moment'])}</td></tr>" for t in record["top"])
    return (f"<div class=panel><div class=caption>\"{html.escape(record['caption'])}\"</div>"
            f"<p class=muted>{html.escape(record['cap_id'])}: true video {html.escape(record['video_id'])}, "
            f"rank {record['rank']['fused']} ({ranks}){vs}; {moment}</p>"
            f"<table>{head}{body}</table><img src=\"{image}\" alt=\"score curves of {html.escape(record['cap_id'])}\">"
            f"</div>")


def movers_table(an: Analysis, other: Analysis, names: tuple[str, str], n: int) -> str:
    """The n captions whose fused rank improved most in each direction between the two runs."""
    delta = (an.ranks["fused"] - other.ranks["fused"]).numpy()
    order = np.argsort(delta, kind="stable")
    head = (f"<tr><th class=l>caption id</th><th class=l>caption</th><th>rank {html.escape(names[0])}</th>"
            f"<th>rank {html.escape(names[1])}</th><th>change</th></tr>")
    parts = []
    for title, idx in ((f"{names[0]} ranks the true video higher", order[:n]),
                       (f"{names[1]} ranks the true video higher", order[::-1][:n])):
        rows = "".join(
            f"<tr><td class=l>{html.escape(an.enc.cap_ids[i])}</td>"
            f"<td class=l>{html.escape(an.split.captions.captions[an.enc.cap_ids[i]])}</td>"
            f"<td>{int(an.ranks['fused'][i])}</td><td>{int(other.ranks['fused'][i])}</td><td>{int(delta[i]):+d}</td></tr>"
            for i in idx if delta[i] != 0)
        parts.append(f"<p>{html.escape(title)}</p><table>{head}{rows}</table>" if rows else
                     f"<p>{html.escape(title)}: no caption.</p>")
    return "".join(parts)


def curves_section(runs: dict[str, Run], img: Path) -> str:
    """Training curves of the runs' metrics.csv (none for a released checkpoint)."""
    curves = {label: rows for label, r in runs.items() if (rows := read_metrics_csv(r)) is not None}
    if not curves:
        return "<h2>Training curves</h2><p class=muted>No metrics.csv (a released checkpoint), so no curves.</p>"
    plots.training_curves(curves, img / "training_curves.png")
    second = "; the second run dashed" if len(curves) > 1 else ""
    return (f"<h2>Training curves</h2><p class=muted>From metrics.csv (one row per epoch){second}.</p>"
            "<img src=\"img/training_curves.png\" alt=\"training curves\">")


def ranks_section(analyses: dict[str, Analysis], split: str, img: Path) -> str:
    """Rank histogram and R@K of the first run (fused and branches), with the second run's fused."""
    names = list(analyses)
    an = analyses[names[0]]
    ranks = {name: r.numpy() for name, r in an.ranks.items()}
    for name in names[1:]:
        ranks[f"fused ({name})"] = analyses[name].ranks["fused"].numpy()
    plots.rank_distribution(ranks, len(an.enc.video_ids), img / "rank_distribution.png")
    return (f"<h2>Rank distribution ({split})</h2><p class=muted>Rank of each caption's true video among "
            f"{len(an.enc.video_ids)} videos, {len(an.enc.cap_ids)} captions.</p>"
            "<img src=\"img/rank_distribution.png\" alt=\"rank distribution\">")


def compare_section(an: Analysis, other: Analysis, names: tuple[str, str], movers: int, img: Path) -> str:
    """Histogram of rank changes between the two runs and the captions that moved most."""
    delta = (an.ranks["fused"] - other.ranks["fused"]).numpy()
    plots.rank_change_histogram(delta, names, img / "rank_changes.png")
    a, b = (html.escape(n) for n in names)
    return (f"<h2>{a} against {b}</h2><p>{int((delta < 0).sum())} captions rank their true video higher in {a}, "
            f"{int((delta > 0).sum())} in {b}, {int((delta == 0).sum())} the same.</p>"
            "<img src=\"img/rank_changes.png\" alt=\"histogram of rank changes\">"
            + movers_table(an, other, names, movers))


def panels_section(analyses: dict[str, Analysis], args: argparse.Namespace, out: Path) -> str:
    """Query panels of a random sample of captions, drawn for the first run."""
    names = list(analyses)
    an = analyses[names[0]]
    chosen = select_queries(an, sample=args.panels, seed=args.seed)
    records = query_records(an, chosen, args.top_k, args.fps)
    teacher = TeacherCurves(an.run.opt)
    panels = []
    for i, (q, record) in enumerate(zip(chosen, records)):
        image = f"img/query_{i}.png"
        panel_figure(an, q, record, teacher, out / image)
        compared = (names[1], int(analyses[names[1]].ranks["fused"][q])) if len(names) > 1 else None
        panels.append(panel_html(record, image, [n for n in an.run.model.score_names() if n != "fused"], compared))
    return (f"<h2>Query panels ({len(records)} random captions of {args.split})</h2>"
            "<p class=muted>Per-position cosine (frames, or a GMMFormer student's clips) of each branch, their fused "
            "curve (bold) and the teacher's (dotted, where its features exist); dashed steps: the student's other "
            "level; orange: estimated moment, hatched green: true moment.</p>" + "".join(panels))


def write_report(run: Run, other: Run | None, args: argparse.Namespace) -> Path:
    """Analyse the run(s) on the split, draw the figures and write DIR/index.html."""
    out = Path(args.out)
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    pair = [run] if other is None else [run, other]
    labels = [r.path.name for r in pair]
    if len(set(labels)) < len(labels):  # two runs in folders of the same name
        labels = [str(r.path) for r in pair]
    runs = dict(zip(labels, pair))
    results = {label: eval_results(r) for label, r in runs.items()}
    analyses = {label: analyse(r, args.split, args.moments, args.moment_threshold) for label, r in runs.items()}
    first = analyses[labels[0]]
    if other is not None and analyses[labels[1]].enc.cap_ids != first.enc.cap_ids:
        raise SystemExit(f"--compare {other.path}: its {args.split} split has other captions than {run.path}'s "
                         f"(different data roots?)")
    sections = [f"<h1>Run report: {html.escape(labels[0])}</h1>"]
    if other is not None:
        sections.append(f"<p>compared with <b>{html.escape(labels[1])}</b></p>")
    sections.append("<h2>Metrics</h2>" + "".join(results_section(label, runs[label], results[label])
                                                    for label in labels))
    sections.append(curves_section(runs, img))
    sections.append(ranks_section(analyses, args.split, img))
    sections.append(f"<h2>Moments ({args.split})</h2>" + moments_section(analyses))
    if other is not None:
        sections.append(compare_section(first, analyses[labels[1]], tuple(labels), args.movers, img))
    sections.append(panels_section(analyses, args, out))
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>DL-DKD report: "
            f"{html.escape(labels[0])}</title><style>{STYLE}</style></head><body>{''.join(sections)}</body></html>\n")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m method.report", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("model_dir", help="run folder (or released checkpoint folder) with model.ckpt, opt.json and "
                                     "eval_<split>.json")
    p.add_argument("--compare", default=None, metavar="OTHER_RUN_DIR", help="a second run to compare with")
    p.add_argument("--out", required=True, help="output folder for index.html and img/")
    add_run_args(p)
    p.add_argument("--panels", type=int, default=6, help="query panels, for a random sample of captions")
    p.add_argument("--seed", type=int, default=0, help="seed of the panels' sample")
    p.add_argument("--top_k", type=int, default=5, help="videos listed per query panel")
    p.add_argument("--movers", type=int, default=10,
                   help="with --compare: captions listed per direction among those whose rank moved most")
    return p


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)
    plots.require_matplotlib()
    run = load_run(args.model_dir, args.root_path, args.collection, args.device, args.num_workers)
    other = None
    if args.compare:
        other = load_run(args.compare, args.root_path, args.collection, args.device, args.num_workers)
    index = write_report(run, other, args)
    print(f"report: {index}")
    return index


if __name__ == "__main__":
    main()
