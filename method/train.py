"""``python -m method.train``: train a recipe (``--recipe``) on a collection; the loop is ``method.training.loop``.

Several processes: ``torchrun --nproc_per_node N -m method.train ...`` trains the
same recipe on the same global batches (``--bsz`` videos); see ``method.parallel.distributed``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed

from method.common.cli import resolve_device
from method.config.flags import build_train_parser, explicit_flags, parse_train_args, resume_options
from method.config.settings import train_settings
from method.parallel import distributed
from method.training import runtime
from method.training.loop import train
from method.training.run_dir import prepare_run_dir


def main(argv=None) -> Optional[dict]:
    """Train, then evaluate the best checkpoint on the test split; returns that result (process 0)."""
    opt = parse_train_args(argv)
    runtime.apply_policy(opt.tf32, opt.deterministic)  # before the first CUDA call (CUBLAS_WORKSPACE_CONFIG)
    world = distributed.world_size_from_env()
    if opt.bsz % world:
        raise SystemExit(f"--bsz {opt.bsz} is the global batch of all processes: it must be a multiple of "
                         f"the {world} processes")
    d, device = distributed.setup(resolve_device(opt.device), opt.dist_timeout)
    try:
        run_dir, resuming = prepare_run_dir(d, opt.resume, opt.results_dir, opt.resume_if_exists, opt.root_path,
                                            opt.collection, opt.exp_id)
        if resuming and not opt.resume:  # --resume_if_exists found a run: it continues with its own opt.json
            opt = resume_options(run_dir, explicit_flags(build_train_parser(), argv))
        opt.results_dir = str(run_dir)
        return train(train_settings(opt), d, device, run_dir, resuming)
    except RuntimeError as e:  # NCCL reports a lost peer as a DistError (a RuntimeError), gloo as a plain one
        if not (d.enabled and (isinstance(e, torch.distributed.DistError) or "gloo" in str(e))):
            raise
        raise SystemExit(f"rank {d.rank}: a collective failed, most likely because another process died "
                         f"(torchrun names it below): {e}") from None
    finally:
        d.close()


if __name__ == "__main__":
    main()
