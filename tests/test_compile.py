"""--compile: frames and tokens padded to buckets, batch dims dynamic, small shares eager; graphs counted on the CPU.

A counting backend (``torch.compile(backend=...)`` called once per graph it is
handed, running the graph as traced) stands in for inductor, so the test
costs dynamo's tracing only.
"""
import numpy as np
import pytest
import torch

from method.config.flags import parse_train_args
from method.data import collate_train
from method.losses import DLDKDLoss, Objective
from method.models.model import DLDKD, ModelConfig
from method.parallel.distributed import Dist
from method.training import loop, rng
from method.training.compiled import CompiledForward, ShapePolicy, bucket
from method.training.optim import build_optimizer

DV, DQ = 6, 5
K = 32  # clips of the GMMFormer family


class CountingBackend:
    """A torch.compile backend that counts the graphs it compiles and runs them unchanged."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_buckets_and_the_v1_quirk():
    policy = ShapePolicy.for_model(ModelConfig.of(DV, DQ))
    assert policy.frames == (16, 32, 64, 128) and policy.tokens == (8, 16, 30)
    assert [bucket(n, policy.frames) for n in (1, 16, 17, 100, 128)] == [16, 16, 32, 128, 128]
    small = ShapePolicy.for_model(ModelConfig.of(DV, DQ, max_ctx_l=48, max_desc_l=12))
    assert small.frames == (16, 32, 48) and small.tokens == (8, 12)
    with pytest.raises(ValueError, match="--compile with --student gmmformer needs --gauss_own_length"):
        ShapePolicy.for_model(ModelConfig.of(DV, DQ, student="gmmformer"))  # Q1: padding changes its numbers
    assert ShapePolicy.for_model(ModelConfig.of(DV, DQ, student="gmmformer", gauss_own_length=True)).frames
    assert ShapePolicy.for_model(ModelConfig.of(DV, DQ, student="gmmformer_v2")).frames == (16, 32, 64, 128)
    with pytest.raises(SystemExit):
        parse_train_args(["--root_path", "/r", "--collection", "tvr", "--recipe", "gmmformer", "--compile"])
    assert parse_train_args(["--root_path", "/r", "--collection", "tvr", "--recipe", "gmmformer", "--compile",
                             "--gauss_own_length"]).compile


def epoch_batches(student: str, n_batches: int, seed: int = 0, max_frames: int = 100) -> list:
    """Training batches of varied videos (2..5), frames (2..max_frames), captions (1..3 a video), tokens (2..29)."""
    g = np.random.default_rng(seed)
    batches = []
    for b in range(n_batches):
        n_videos = int(g.integers(2, 6))
        items = []
        for v in range(n_videos):
            n, caps = int(g.integers(2, max_frames + 1)), int(g.integers(1, 4))
            item = {"video_id": f"v{b}_{v}", "cap_ids": [f"v{b}_{v}#{j}" for j in range(caps)],
                    "video_feat": g.standard_normal((n, DV)).astype(np.float32),
                    "query_feats": [g.standard_normal((int(g.integers(2, 30)), DQ)).astype(np.float32)
                                    for _ in range(caps)]}
            if student != "dldkd":
                item["clip_feat"] = g.standard_normal((K, DV)).astype(np.float32)
            items.append(item)
        batches.append(collate_train(items, sort_by="frames"))
    return batches


def make_run(student: str, forward_of) -> loop.Run:
    rng.set_seed(0)
    cfg = ModelConfig.of(DV, DQ, hidden_size=8, n_heads=2, input_drop=0.0, drop=0.0, student=student,
                      share_query_proj=student == "dldkd", single_branch=student != "dldkd",
                      **({"gauss_own_length": True} if student == "gmmformer" else {}))
    model = DLDKD(cfg)
    optimizer, scheduler = build_optimizer(model, "bertadam", 1e-3, 0.01, total_steps=20)
    levels = model.levels
    objective = Objective(nce_weights={lv: 0.04 for lv in levels})
    forward, shapes = forward_of(model)
    return loop.Run(model=model, forward=forward, loader=None, optimizer=optimizer, scheduler=scheduler,
                     loss_fn=DLDKDLoss(0.1, 2, objective=objective), teacher=None, dist=Dist(), shapes=shapes)


def run_epoch(run: loop.Run, batches: list) -> list:
    out = []
    for b in batches:
        terms = loop.train_step(run, b, {"kd_factor": 0.0, "hard_negative": True})
        out.append({k: v.item() for k, v in terms.items()})
    return out


@pytest.mark.parametrize("student", ["dldkd", "gmmformer", "gmmformer_v2"])
def test_padding_to_the_buckets_keeps_the_losses(student):
    """Eager steps on bucket-padded batches against unpadded ones (GMMFormer v1 with its own-length Gaussians)."""
    batches = epoch_batches(student, 3, max_frames=40)
    padded = run_epoch(make_run(student, lambda model: (model, ShapePolicy.for_model(model.cfg))), batches)
    ref = run_epoch(make_run(student, lambda model: (model, None)), batches)
    for step, (a, b) in enumerate(zip(padded, ref)):
        assert a.keys() == b.keys()
        for name in b:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-7), (step, name)


@pytest.mark.slow
def test_an_epoch_compiles_at_most_one_graph_per_bucket_pair():
    """Varied frames, tokens, videos and captions; an empty share and a one-video share run eagerly."""
    batches = epoch_batches("dldkd", 8)
    backend = CountingBackend()

    def compiled(model):
        policy = ShapePolicy.for_model(model.cfg)
        return CompiledForward(model, policy, backend=backend), policy

    torch._dynamo.reset()
    run = make_run("dldkd", compiled)
    got = run_epoch(run, batches)
    policy = run.shapes
    pairs = {(policy.frame_length(b["video_mask"].shape[1]), bucket(b["query_mask"].shape[1], policy.tokens))
             for b in batches}
    assert len({b["video_mask"].shape[1] for b in batches}) >= 6  # the lengths did vary
    assert len({b["query_mask"].shape[0] for b in batches}) >= 4  # and the captions
    assert 1 <= backend.graphs <= len(pairs) < len(batches), (backend.graphs, pairs)
    graphs = backend.graphs
    for v, q in ((0, 0), (1, 2)):  # an empty share and a share of one video (several processes): eager
        run.forward(torch.zeros(v, 7, DV), torch.ones(v, 7), torch.zeros(q, 9, DQ), torch.ones(q, 9))
    assert backend.graphs == graphs
    ref = run_epoch(make_run("dldkd", lambda model: (model, None)), batches)  # eager, unpadded
    for step, (a, b) in enumerate(zip(got, ref)):
        for name in b:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-7), (step, name)
