"""``python -m method.eval``: evaluate a run folder or an authors' checkpoint (``do_test.sh`` wraps it).

``NPROC=N ./do_test.sh`` runs N processes through torchrun, each evaluating a share (``method.evaluation``).
"""
from __future__ import annotations

import argparse

from method.common.cli import HelpFormatter, resolve_device
from method.config.flags import add_data_args, fusion_weights
from method.config.run_options import recipe_fallback, resolve_model_dir, run_options
from method.config.settings import data_options
from method.evaluation.evaluate import evaluate_split
from method.models.checkpoint import CheckpointError, load_model, model_file
from method.parallel import distributed


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m method.eval",
        description="Evaluate a DL-DKD run folder (this project's or the authors' released checkpoint).",
        formatter_class=HelpFormatter)
    p.add_argument("--model_dir", required=True,
                   help="run folder with model.ckpt and opt.json (or an authors' GMMFormer run folder with best.ckpt); "
                        "a bare name is looked up in <root_path>/<collection>/results/")
    p.add_argument("--eval_split", choices=("train", "val", "test"), help="caption split to evaluate (default test)")
    p.add_argument("--save_scores", action="store_true",
                   help="also write the fused score matrix (scores_<split>.npy) and its query / video ids")
    add_data_args(p)
    for action in p._actions:  # only flags given on the command line override the run's opt.json
        if action.dest not in ("help", "model_dir"):
            action.default = argparse.SUPPRESS
    return p


def main(argv=None) -> dict:
    args = build_eval_parser().parse_args(argv)
    model_dir = resolve_model_dir(args.model_dir, getattr(args, "root_path", None), getattr(args, "collection", None))
    opt, stored = run_options(model_dir, {"eval_split": "test", "save_scores": False, **vars(args)})
    try:
        model, info = load_model(model_file(model_dir), stored, fallback=recipe_fallback(opt))
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    d, device = distributed.setup(resolve_device(opt.device), opt.dist_timeout)  # NPROC=N ./do_test.sh: torchrun
    try:
        return evaluate_split(model.to(device), opt.eval_split, data_options(opt), fusion_weights(opt), device,
                              model_dir, info, opt.save_scores, d)
    finally:
        d.close()


if __name__ == "__main__":
    main()
