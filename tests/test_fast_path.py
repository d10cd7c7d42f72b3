"""The GMMFormer family's fast path (method.models.students.blocks.FAST_PATH) against the reference ("off").

Outputs, losses and gradients to 1e-5 relative in float32, for gmmformer and gmmformer_v2 (tiny hidden sizes),
frame lengths 1 to 128 and token counts 1 to 30, with batches where nothing is padded; plus the length buckets
and the single-query cross-attention on their own.
"""
import random

import pytest
import torch

from method.models.model import DLDKD, ModelConfig
from method.models.students import blocks
from method.models.students.blocks import FFNAttentionLayer, length_buckets, run_bucketed

STUDENTS = ("gmmformer", "gmmformer_v2", "ral", "holmes")  # holmes: its frames run at 128 (H2), its captions cut


def rel_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5, name: str = "") -> None:
    """max |a - b| / max(1, |b|) <= tol."""
    assert a.shape == b.shape, (name, a.shape, b.shape)
    dev = ((a.double() - b.double()).abs() / b.double().abs().clamp(min=1.0)).max().item() if a.numel() else 0.0
    assert dev <= tol, f"{name}: max relative deviation {dev:.3g}"


def tiny_model(student: str, **overrides) -> DLDKD:
    torch.manual_seed(0)
    cfg = ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2, student=student,
                         single_branch=True, input_drop=0.0, drop=0.0, **overrides)
    return DLDKD(cfg)


def batch(frame_lengths, token_counts, seed=0, max_frames=None, max_tokens=None):
    g = torch.Generator().manual_seed(seed)
    lf = max_frames or max(frame_lengths)
    lt = max_tokens or max(token_counts)
    fl, tl = torch.tensor(frame_lengths), torch.tensor(token_counts)
    fmask = (torch.arange(lf)[None] < fl[:, None]).float()
    tmask = (torch.arange(lt)[None] < tl[:, None]).float()
    frames = torch.randn(len(fl), lf, 6, generator=g) * fmask[..., None]
    clips = torch.randn(len(fl), 32, 6, generator=g)
    text = torch.randn(len(tl), lt, 5, generator=g) * tmask[..., None]
    return frames, fmask, text, tmask, clips


def forward_and_grads(model, mode, b):
    """Embeddings, a scalar loss of them and the parameter gradients, with blocks.FAST_PATH = mode."""
    old = blocks.FAST_PATH
    blocks.FAST_PATH = mode
    try:
        model.zero_grad()
        frames, fmask, text, tmask, clips = b
        branch = model.inheritance
        q = branch.encode_query(text, tmask)
        v = branch.encode_video(frames, fmask, clips)
        # a loss touching every output: query-video scores of every level, squared
        loss = sum(((torch.einsum("qd,vkd->qvk", q, v[k]) ** 2).mean() + (v[k] ** 2).mean()) for k in v)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return {"query": q.detach(), **{k: x.detach() for k, x in v.items()}}, loss.detach(), grads
    finally:
        blocks.FAST_PATH = old


def assert_matches(got, ref) -> None:
    """``forward_and_grads`` results ``got`` equal the reference's ``ref``: every output, the loss and every
    parameter's gradient to 1e-5 relative, and the same parameters with a gradient."""
    (out, loss, grads), (ref_out, ref_loss, ref_grads) = got, ref
    for k in ref_out:
        rel_close(out[k], ref_out[k], name=k)
    rel_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for n in ref_grads:
        rel_close(grads[n], ref_grads[n], name=n)

CASES = [
    ([128, 128, 128], [30, 30, 30, 30]),            # nothing padded, the longest
    ([1, 1], [1, 1, 1]),                              # the shortest, nothing padded
    ([1, 128, 64, 2, 127], [1, 30, 15, 2, 29, 7]),    # extremes mixed
    ([5, 17, 3, 9, 9, 40, 33, 12], [3, 11, 4, 20, 8]),
    ([70] * 4 + [128] + [20] * 5, [13] * 6 + [30, 2]),
]


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("train", [True, False])
def test_fast_path_equals_reference(student, case, train):
    model = tiny_model(student).train(train)
    b = batch(*CASES[case], seed=case)
    ref = forward_and_grads(model, "off", b)
    for mode in ("exact", "on"):  # dropout 0: "on" is exact too
        assert_matches(forward_and_grads(model, mode, b), ref)


@pytest.mark.parametrize("student", STUDENTS)
def test_fast_path_random_lengths_padded_batch(student):
    """Random lengths 1..128 / 1..30 in batches padded beyond their longest item (the loader's fixed sizes)."""
    rng = random.Random(7)
    model = tiny_model(student).train()
    for seed in range(3):
        fl = [rng.randint(1, 128) for _ in range(9)]
        tl = [rng.randint(1, 30) for _ in range(11)]
        b = batch(fl, tl, seed=seed, max_frames=128, max_tokens=30)
        assert_matches(forward_and_grads(model, "exact", b), forward_and_grads(model, "off", b))


def test_gmmformer_q1_fix_fast_path():
    """The own-length Gaussians (Q1 fix) through the buckets."""
    model = tiny_model("gmmformer", gauss_own_length=True).train()
    b = batch([3, 50, 128, 1, 77], [4, 30, 1], seed=11)
    assert_matches(forward_and_grads(model, "exact", b), forward_and_grads(model, "off", b))


def test_holmes_valid_token_frames_in_buckets():
    """Holmes with ``token_valid_positions`` (its padded positions take no part): the frames run in length buckets
    with the reference's numbers and dropout masks; by default (H2) they run at 128 positions, not cut."""
    for valid in (True, False):
        torch.manual_seed(0)
        model = DLDKD(ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2,
                                     student="holmes", single_branch=True, input_drop=0.1, drop=0.1,
                                     token_valid_positions=valid)).train()
        b = batch([5, 17, 3, 9, 9, 40, 33, 12], [1])
        torch.manual_seed(2)
        ref = forward_and_grads(model, "off", b)
        counts = dict(blocks.BUCKET_COUNTS)
        torch.manual_seed(2)
        assert_matches(forward_and_grads(model, "exact", b), ref)
        assert (blocks.BUCKET_COUNTS["bucketed"] > counts["bucketed"]) == valid
        assert blocks.BUCKET_COUNTS["reference"] == counts["reference"]


DROPOUT_CASES = [
    ([3, 20, 9], [2, 7]),
    ([1, 128, 64, 2, 127], [1, 30, 15, 2, 29, 7]),   # extremes mixed
    ([128, 128, 128], [30, 30, 30, 30]),              # nothing padded
    ([1, 1], [1, 1, 1]),
    ([5, 17, 3, 9, 9, 40, 33, 12, 60, 1, 2], [3, 11, 4, 20, 8, 1, 30, 17, 16]),
]


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("case", range(len(DROPOUT_CASES)))
def test_exact_mode_draws_the_reference_dropout_masks(student, case):
    """With dropout > 0 in training, "exact" runs the length buckets with the reference's dropout masks
    (blocks.DropoutTape): the same outputs, loss and gradients under the same seed, the generator left where the
    reference leaves it, and no region set back to the padded batch."""
    torch.manual_seed(0)
    model = DLDKD(ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2,
                                 student=student, single_branch=True, input_drop=0.1, drop=0.1)).train()
    b = batch(*DROPOUT_CASES[case], seed=case)
    assert blocks.buckets_allowed(model.inheritance)
    torch.manual_seed(5)
    ref = forward_and_grads(model, "off", b)
    ref_state = torch.get_rng_state()
    counts = dict(blocks.BUCKET_COUNTS)
    torch.manual_seed(5)
    got = forward_and_grads(model, "exact", b)
    assert torch.equal(torch.get_rng_state(), ref_state)
    assert blocks.BUCKET_COUNTS["reference"] == counts["reference"]
    if case in (1, 4):  # lengths far enough apart to be cut (the others: one bucket, or nothing padded)
        assert blocks.BUCKET_COUNTS["bucketed"] > counts["bucketed"]
    assert_matches(got, ref)


def test_dropout_tape_random_lengths_padded_batch():
    """Random lengths 1..128 / 1..30 in batches padded to 128 / 30, dropout 0.3: "exact" equals "off"."""
    rng = random.Random(3)
    for student in STUDENTS:
        torch.manual_seed(0)
        model = DLDKD(ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2,
                                     student=student, single_branch=True, input_drop=0.3, drop=0.3)).train()
        for seed in range(2):
            b = batch([rng.randint(1, 128) for _ in range(9)], [rng.randint(1, 30) for _ in range(11)], seed=seed,
                      max_frames=128, max_tokens=30)
            torch.manual_seed(seed)
            ref = forward_and_grads(model, "off", b)
            torch.manual_seed(seed)
            assert_matches(forward_and_grads(model, "exact", b), ref)


def test_dropout_tape_falls_back_when_something_else_draws():
    """A dropout outside blocks.dropout inside a bucketed region: the region runs again on the padded batch,
    from the same generator state, so the result is the reference's."""
    mask = (torch.arange(40)[None] < torch.tensor([40, 3, 2, 1])[:, None]).float()
    x = torch.randn(4, 40, 6)
    module = torch.nn.Dropout(0.5).train()

    def fn(m, y):
        return torch.nn.functional.dropout(blocks.dropout(module, y), 0.5) * m[..., None]

    outs = {}
    for mode in ("off", "exact"):
        old = blocks.FAST_PATH
        blocks.FAST_PATH = mode
        try:
            torch.manual_seed(1)
            before = dict(blocks.BUCKET_COUNTS)
            outs[mode] = blocks.run_bucketed(fn, mask, x) if mode == "exact" else fn(mask, x)
            if mode == "exact":
                assert blocks.BUCKET_COUNTS["reference"] == before["reference"] + 1
        finally:
            blocks.FAST_PATH = old
    torch.testing.assert_close(outs["exact"], outs["off"], rtol=0, atol=0)


def test_dropout_tape_at_the_reference_length_and_its_fallback():
    """``length`` beyond the batch's T (GMMFormerV2's 128): the tape draws at that length, the output is padded
    to it, and the CPU fallback runs the reference padded to it: both equal the padded reference bit for bit."""
    mask = (torch.arange(10)[None] < torch.tensor([10, 3, 2, 1])[:, None]).float()
    x = torch.randn(4, 10, 6)
    module = torch.nn.Dropout(0.5).train()

    def clean(m, y):
        return blocks.dropout(module, y) * m[..., None]

    def drawing(m, y):  # a dropout outside blocks.dropout: the region falls back
        return torch.nn.functional.dropout(clean(m, y), 0.5) * m[..., None]

    padded_mask, padded_x = blocks.pad_frames(x, mask, 16)[::-1]
    for fn, fallbacks in ((clean, 0), (drawing, 1)):
        torch.manual_seed(1)
        ref = fn(padded_mask, padded_x)
        old, blocks.FAST_PATH = blocks.FAST_PATH, "exact"
        try:
            torch.manual_seed(1)
            before = dict(blocks.BUCKET_COUNTS)
            out = blocks.run_bucketed(fn, mask, x, length=16)
            assert blocks.BUCKET_COUNTS["reference"] == before["reference"] + fallbacks
        finally:
            blocks.FAST_PATH = old
        assert out.shape == (4, 16, 6)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="length 8"):
        blocks.run_bucketed(clean, mask, x, length=8)


def test_v2_reference_is_the_authors_padding_to_128_with_dropout():
    """GMMFormerV2's reference ("off") pads every batch to 128 frames before the block, as the authors do, so its
    dropout masks are drawn at 128 positions; the fast path takes those masks: under one seed both equal the
    authors' form written out here (clips first, then the frames padded to 128)."""
    torch.manual_seed(0)
    model = DLDKD(ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2,
                                 student="gmmformer_v2", single_branch=True, input_drop=0.1, drop=0.1)).train()
    v2 = model.inheritance
    frames, fmask, _, _, clips = batch([3, 20, 9, 1], [2])
    torch.manual_seed(4)
    clip = v2.clip_encoder(v2.clip_pos_embed(v2.clip_input_proj(clips)), v2.weight_token)
    f128, m128 = blocks.pad_frames(frames, fmask, 128)
    x = v2.frame_encoder_1(v2.frame_pos_embed(v2.frame_input_proj(f128)), v2.weight_token, m128)
    authors = {"clip": clip, "frame": x.masked_fill(m128[..., None] == 0, 0.0)}
    old = blocks.FAST_PATH
    try:
        for mode in ("off", "exact"):
            blocks.FAST_PATH = mode
            torch.manual_seed(4)
            out = v2.encode_video(frames, fmask, clips)
            for k in authors:
                rel_close(out[k], authors[k], name=f"{mode} {k}")
    finally:
        blocks.FAST_PATH = old


def test_one_query_cross_attention_with_dropout_draws_the_same():
    torch.manual_seed(0)
    layer = FFNAttentionLayer(8, 2, 0.3, 8).train()
    token = torch.randn(1, 1, 8)
    memory = torch.randn(6, 5, 8)
    mask = (torch.arange(5)[None] < torch.tensor([5, 1, 3, 4, 2, 5])[:, None]).float()
    torch.manual_seed(1)
    ref = layer(token.expand(6, 1, 8), mask, memory)
    torch.manual_seed(1)
    fast = layer.forward_one_query(token, memory, mask)
    rel_close(fast, ref)
    with pytest.raises(ValueError):
        FFNAttentionLayer(8, 2, 0.0, 8, width=1.0).self.one_query(token, memory)


def test_length_buckets_cover_every_row_once():
    rng = random.Random(0)
    for n in (1, 2, 9, 128):
        lengths = [rng.randint(1, 128) for _ in range(n)]
        groups = length_buckets(lengths)
        assert 1 <= len(groups) <= blocks.MAX_BUCKETS
        rows = sorted(i for g, _ in groups for i in g)
        assert rows == list(range(n))
        for g, length in groups:
            assert length == max(lengths[i] for i in g)
    assert length_buckets([]) == []
    assert length_buckets([128] * 5) == [([0, 1, 2, 3, 4], 128)]


def test_run_bucketed_order_and_padding():
    mask = (torch.arange(6)[None] < torch.tensor([6, 1, 3, 0])[:, None]).float()
    x = torch.arange(4 * 6, dtype=torch.float32).view(4, 6, 1)
    out = run_bucketed(lambda m, y: y * m[..., None], mask, x)
    torch.testing.assert_close(out, x * mask[..., None])


def test_fast_path_mode_checked():
    old = blocks.FAST_PATH
    blocks.FAST_PATH = "fast"
    try:
        with pytest.raises(ValueError):
            blocks.fast_path()
    finally:
        blocks.FAST_PATH = old


@pytest.mark.parametrize("student", ("gmmformer", "gmmformer_v2"))
def test_training_losses_and_gradients(student):
    """The model's forward and the family's loss terms (InfoNCE, triplet, query diversity, and V2's matching).

    Float32: the loss terms to 1e-5. The gradients of this objective are ill-conditioned on the query side
    (query diversity at scale 32, the matching): the reference's own float32 gradients are 1.5e-5 from float64
    there, so float32 gradients are held to 5e-5, and the maths to 1e-9 in float64.
    """
    from method.losses import nce_loss, ot_loss, qdl_v1, qdl_v2, triplet_loss
    from method.models.model import score_level

    model = tiny_model(student).train()
    frames, fmask, _, _, clips = batch([9, 1, 128, 40, 3, 77], [1], seed=3)
    labels = torch.arange(6).repeat_interleave(2)
    _, _, text, tmask, _ = batch([1], [1, 30, 12, 5, 7, 2, 29, 13, 8, 4, 18, 30], seed=4)

    def run(mode, dtype):
        old = blocks.FAST_PATH
        blocks.FAST_PATH = mode
        try:
            model.to(dtype).zero_grad()
            out = model(*(x.to(dtype) for x in (frames, fmask, text, tmask, clips)), second_queries=True)
            query, second = out["queries"]["inheritance"], out["queries2"]["inheritance"]
            videos = out["videos"]["inheritance"]
            comps = []
            for level in ("clip", "frame"):
                s = score_level(query, videos[level], out["masks"][level])
                comps += [nce_loss(s.video_scores_raw, labels),
                          triplet_loss(s.video_scores, labels, 0.1, hard_negative=True, hard_pool_size=1)]
            if student == "gmmformer":
                comps.append(qdl_v1(second, labels, 0.15, 32.0))
            else:
                comps += [qdl_v2(second, labels, 0.15, 32.0, 1.0), ot_loss(second, videos["clip"], labels)]
            comps = torch.stack(comps)
            comps.sum().backward()
            return comps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        finally:
            blocks.FAST_PATH = old

    for dtype, loss_tol, grad_tol in ((torch.float32, 1e-5, 5e-5), (torch.float64, 1e-9, 1e-9)):
        ref, ref_grads = run("off", dtype)
        fast, grads = run("exact", dtype)
        rel_close(fast, ref, loss_tol, "losses")
        assert grads.keys() == ref_grads.keys()
        for n in ref_grads:
            rel_close(grads[n], ref_grads[n], grad_tol, n)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_compact_dropouts_draw_and_give_the_same(p):
    """The fast path's dropouts keep less for backward but draw the same random numbers, with the same result."""
    x = torch.randn(5, 7, 12, requires_grad=True)
    g = torch.randn(5, 7, 12)
    module = torch.nn.Dropout(p).train()
    for fast, ref in ((blocks.dropout, lambda m, y: m(y)),
                      (blocks.relu_dropout, lambda m, y: m(torch.nn.functional.relu(y)))):
        outs = []
        for mode, fn in (("off", ref), ("exact", fast)):
            old = blocks.FAST_PATH
            blocks.FAST_PATH = mode
            try:
                torch.manual_seed(9)
                x.grad = None
                y = fn(module, x)
                y.backward(g)
                outs.append((y.detach(), x.grad.clone()))
            finally:
                blocks.FAST_PATH = old
        assert torch.equal(outs[0][0], outs[1][0])
        assert torch.equal(outs[0][1], outs[1][1])


def test_bench_length_distributions():
    """bench/common.py's --lengths: counts in range, the batch padded to its longest, 'full' as before."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from common import LENGTHS, draw_lengths, synthetic_batch

    g = torch.Generator().manual_seed(0)
    for kind in LENGTHS:
        f, t = draw_lengths(kind, 64, 5, 128, 30, g)
        assert f.shape == (64,) and t.shape == (320,)
        assert 1 <= int(f.min()) and int(f.max()) <= 128 and 1 <= int(t.min()) and int(t.max()) <= 30
    preset = {"videos": 6, "frames": 128, "visual_dim": 4, "captions": 2, "tokens": 30, "text_dim": 3}
    b = synthetic_batch(preset, torch.device("cpu"), lengths="tvr")
    assert b["video_feat"].shape[1] == int(b["video_mask"].sum(1).max()) <= 60
    full = synthetic_batch(preset, torch.device("cpu"))
    assert full["video_mask"].all() and full["video_feat"].shape[1] == 128 and full["query_feat"].shape[1] == 30


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("case", [1, 2, 4])
def test_checkpointed_branches_equal_the_reference(student, case):
    """blocks.CHECKPOINT_BRANCHES (the GMM / DyGMM branches and the query encoder run again in backward, with
    their first run's dropout masks): with dropout 0.1, the reference's outputs, loss, gradients and random
    stream under the same seed; and in evaluation mode nothing is checkpointed."""
    torch.manual_seed(0)
    model = DLDKD(ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2,
                                 student=student, single_branch=True, input_drop=0.1, drop=0.1)).train()
    b = batch(*DROPOUT_CASES[case], seed=case)
    torch.manual_seed(5)
    ref = forward_and_grads(model, "off", b)
    ref_state = torch.get_rng_state()
    old = blocks.CHECKPOINT_BRANCHES
    blocks.CHECKPOINT_BRANCHES = True
    try:
        torch.manual_seed(5)
        got = forward_and_grads(model, "exact", b)
        assert blocks.checkpoint_branches(model.inheritance)
        assert not blocks.checkpoint_branches(model.inheritance.eval())
    finally:
        blocks.CHECKPOINT_BRANCHES = old
    assert torch.equal(torch.get_rng_state(), ref_state)
    assert_matches(got, ref)


@pytest.mark.parametrize("shape", [(5, 7, 48), (3, 48), (4, 1, 48), (16, 60, 48)])
@pytest.mark.parametrize("input_grad", [True, False])
def test_linear_layer_fast_path_bit_for_bit(shape, input_grad):
    """LinearLayer's fused LayerNorm-dropout-Linear (keeps x, not its normalised copies): the reference's draw,
    output and gradients bit for bit."""
    torch.manual_seed(0)
    layer = blocks.LinearLayer(48, 16, 0.3).train()
    x = torch.randn(*shape, requires_grad=input_grad)
    g = torch.randn(*shape[:-1], 16)
    res = []
    for mode in ("off", "exact"):
        old = blocks.FAST_PATH
        blocks.FAST_PATH = mode
        try:
            layer.zero_grad()
            x.grad = None
            torch.manual_seed(3)
            y = layer(x)
            y.backward(g)
            res.append([y.detach(), torch.get_rng_state()] + ([x.grad.clone()] if input_grad else [])
                       + [p.grad.clone() for p in layer.parameters()])
        finally:
            blocks.FAST_PATH = old
    for a, b in zip(*res):
        assert torch.equal(a, b)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.7, 0.0, 1.0])
def test_bernoulli_keep_is_the_cpu_dropout_draw(p, monkeypatch):
    """The masks the fast path draws on the CPU are ``bernoulli_(1 - p)``'s bit for bit, and leave the generator
    where it leaves it: across the word chunks (made small here), with and without the word draw."""
    monkeypatch.setattr(blocks, "_WORD_CHUNK", 1000)
    for word_draw in (True, False):
        if word_draw and not blocks._bernoulli_is_word_draw():
            continue  # this build draws otherwise: _bernoulli_keep calls bernoulli_ itself (the second pass)
        monkeypatch.setattr(blocks, "_bernoulli_is_word_draw", lambda w=word_draw: w)
        for shape in [(0,), (1,), (999,), (1000,), (3, 7, 101), (2, 1, 2500)]:
            torch.manual_seed(3)
            torch.rand(5)  # a generator part way through its block of 624 words
            want = torch.empty(shape).bernoulli_(1 - p).bool()
            after = torch.get_rng_state()
            torch.manual_seed(3)
            torch.rand(5)
            keep = blocks._bernoulli_keep(shape, p, torch.device("cpu"))
            assert keep.dtype == torch.bool and keep.shape == torch.Size(shape)
            assert torch.equal(keep, want), (word_draw, shape)
            assert torch.equal(torch.get_rng_state(), after), (word_draw, shape)


def test_bernoulli_word_draw_check_rejects_another_stream(monkeypatch):
    """A build whose ``bernoulli_`` draws other numbers (MKL's stream on Intel CPUs) fails the check."""
    blocks._bernoulli_is_word_draw.cache_clear()
    real = torch.Tensor.bernoulli_
    def other_stream(t, p, generator=None):
        return real(t, p, generator=generator).flip(0)

    monkeypatch.setattr(torch.Tensor, "bernoulli_", other_stream)
    try:
        assert not blocks._bernoulli_is_word_draw()
    finally:
        monkeypatch.undo()
        blocks._bernoulli_is_word_draw.cache_clear()


def test_pack_mask_round_trip():
    g = torch.Generator().manual_seed(0)
    for shape in [(0,), (1,), (7,), (8,), (3, 5, 9), (2, 4, 60, 60)]:
        keep = torch.rand(shape, generator=g) < 0.7
        packed, s = blocks.pack_mask(keep)
        assert packed.dtype == torch.uint8 and packed.numel() == (keep.numel() + 7) // 8
        assert torch.equal(blocks.unpack_mask(packed, s), keep)
        # the layout written out (the form that runs off the CPU): bit j of byte i is element 8 i + j
        flat = torch.nn.functional.pad(keep.reshape(-1).to(torch.int64), (0, -keep.numel() % 8)).view(-1, 8)
        assert torch.equal(packed.to(torch.int64), (flat * 2 ** torch.arange(8)).sum(-1))
    transposed = (torch.rand(5, 9, generator=g) < 0.5).t()  # not contiguous
    assert torch.equal(blocks.unpack_mask(*blocks.pack_mask(transposed)), transposed)


def test_cached_gaussian_prior():
    """The Gaussian priors made once per length and width (fast path): the reference's, and usable in training
    after being made first in inference mode."""
    blocks._cached_gaussian.cache_clear()
    layer = blocks.GaussianSelfAttention(8, 2, 0.0, width=0.5).train()
    x = torch.randn(3, 11, 8)
    mask = torch.ones(3, 11)
    with torch.inference_mode():
        layer(x, mask)
    torch.testing.assert_close(blocks._cached_gaussian(11, 0.5, False, x.device), blocks.gaussian_matrix(11, 0.5),
                               rtol=0, atol=0)
    ref = None
    for mode in ("off", "exact"):
        old = blocks.FAST_PATH
        blocks.FAST_PATH = mode
        try:
            layer.zero_grad()
            out = layer(x, mask)
            out.square().sum().backward()
            grads = [p.grad.clone() for p in layer.parameters()]
        finally:
            blocks.FAST_PATH = old
        if ref is None:
            ref = (out.detach(), grads)
        else:
            torch.testing.assert_close(out.detach(), ref[0], rtol=0, atol=0)
            for a, b in zip(grads, ref[1]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mask_padded", [False, True])
def test_word_frame_scores_skip_the_positions_masked_in_every_video(mask_padded):
    """RAL's word-frame score and the dual Holmes' token-wise score over (V, 128) frames zeroed beyond each video's
    length, with their frame mask or (as training and evaluation pass it) a mask of ones: the fast path computes them
    over the batch's L positions and puts the 0 floor back; the scores and the gradients of the tokens and of what
    produced the frames equal the reference's (float64), also with a video at 128 (nothing cut)."""
    from types import SimpleNamespace

    from method.models.students.holmes_dual import HolmesDualStudent, token_wise_scores
    from method.models.students.ral import word_frame_pair, word_frame_scores
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 1).double()  # RAL's token-confidence head (both scores of a level share one cut)
    cuts = 0
    for lengths in ([7, 30, 2], [128, 5], [1, 1]):
        mask = (torch.arange(128)[None] < torch.tensor(lengths)[:, None]).double()
        tokens = torch.randn(4, 6, 8, generator=g, dtype=torch.float64)
        tmask = (torch.arange(6)[None] < torch.tensor([6, 1, 3, 4])[:, None]).double()
        weights = torch.rand(4, 6, generator=g, dtype=torch.float64)
        raw = torch.randn(len(lengths), 128, 8, generator=g, dtype=torch.float64)
        for given in ([mask] if mask_padded else [mask, torch.ones_like(mask)]):
            fns = [lambda t, f, m=given: word_frame_scores(t, tmask, f, m, weights, mask_padded),
                   lambda t, f, m=given: torch.stack(
                       [word_frame_pair(t, tmask, f, m, head, mask_padded)[k] for k in ("cos", "raw")])]
            if not mask_padded:
                # the dual Holmes' S_f and U_f of a level share one cut: its authors' forward and the training loop's
                dual = SimpleNamespace(text_weight_fc=head, hcfg=SimpleNamespace(shared_token_weights=False))
                logits = {"token_logits": weights, "token_logits_raw": weights.flip(1)}
                fns += [lambda t, f, m=given: token_wise_scores(t, tmask, f, m, weights),
                        lambda t, f, m=given: torch.stack(HolmesDualStudent.token_scores(dual, t, tmask, f, m)),
                        lambda t, f, m=given: (lambda o: torch.stack([o.video_scores, o.video_scores_raw]))(
                            HolmesDualStudent.level_scores(dual, "frame", None, f, m,
                                                           {"tokens": t, "token_mask": tmask, **logits}))]
            for fn in fns:
                results = {}
                for mode in ("off", "exact"):
                    old, blocks.FAST_PATH = blocks.FAST_PATH, mode
                    try:
                        t, r = tokens.clone().requires_grad_(), raw.clone().requires_grad_()
                        score = fn(t, r * mask[..., None])  # the encoder zeroes the padded rows
                        weight = torch.arange(1.0, score.numel() + 1, dtype=score.dtype).view_as(score)
                        (score * weight).sum().backward()
                        results[mode] = (score.detach(), t.grad, r.grad)
                    finally:
                        blocks.FAST_PATH = old
                for got, ref in zip(results["exact"], results["off"]):
                    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
            cuts += blocks.cut_masked_tail(raw * mask[..., None], given)[2]
    assert cuts > 0
