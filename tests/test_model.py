"""The student model against the authors' released code (golden tiny model) and its own invariants."""
import numpy as np
import torch

from method.models.checkpoint import released_to_own
from method.models.model import DLDKD, ModelConfig, cosine_video_scores, normalize_frames, score_level


def tiny_released_model(golden) -> DLDKD:
    state = {k[len("model/"):]: torch.from_numpy(golden[k]) for k in golden.files if k.startswith("model/")}
    model = DLDKD(ModelConfig.of(visual_input_size=16, query_input_size=12, hidden_size=8, n_heads=2))
    model.load_state_dict(released_to_own(state))
    return model.eval()


def tiny_inputs(golden):
    return [torch.from_numpy(golden[k]) for k in
            ("tiny_video_feat", "tiny_video_mask", "tiny_query_feat", "tiny_query_mask")]


def test_scores_match_released_code(golden):
    model = tiny_released_model(golden)
    vf, vm, qf, qm = tiny_inputs(golden)
    with torch.no_grad():
        train_scores = model.score(vf, vm, qf, qm)
        queries, frames = model.encode_queries(qf, qm), model.encode_videos(vf, vm)
        infer = {k: cosine_video_scores(queries[k], normalize_frames(frames[k]["frame"], vm)) for k in queries}
    for name, key in (("exploration", "tiny_scores_exploration_A"), ("inheritance", "tiny_scores_inheritance_B")):
        np.testing.assert_allclose(train_scores[name]["frame"].video_scores.numpy(), golden[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(infer[name].numpy(), golden[key], rtol=1e-5, atol=1e-6)
    fused = model.fuse(infer, {"exploration": 0.3, "inheritance": 0.7})
    np.testing.assert_allclose(fused.numpy(), golden["tiny_scores_fused"], rtol=1e-5, atol=1e-6)


def test_exploration_uses_inheritance_query_projection(golden):
    """The released quirk: replacing A_query_input_proj changes nothing, B_'s changes the exploration scores."""
    model = tiny_released_model(golden)
    assert not hasattr(model.exploration, "query_input_proj")
    vf, vm, qf, qm = tiny_inputs(golden)
    with torch.no_grad():
        before = model.score(vf, vm, qf, qm)["exploration"]["frame"].video_scores
        model.inheritance.query_input_proj.net[1].weight.mul_(-1.0)
        after = model.score(vf, vm, qf, qm)["exploration"]["frame"].video_scores
    assert not torch.allclose(before, after)


def test_separate_query_projection_flag():
    cfg = ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2, share_query_proj=False)
    model = DLDKD(cfg)
    assert "exploration.query_input_proj.net.1.weight" in model.state_dict()
    single = DLDKD(ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2, single_branch=True))
    assert single.branch_names == ("inheritance",)
    assert not any(k.startswith("exploration.") for k in single.state_dict())


def test_parameter_count_matches_released_tvr_checkpoint():
    """74 released tensors, 5,755,392 parameters; the unused A_query_input_proj (2 x 768 + 384 x 769) is not built."""
    model = DLDKD(ModelConfig.of(visual_input_size=3072, query_input_size=768))
    unused = 2 * 768 + 384 * 768 + 384
    assert sum(p.numel() for p in model.parameters()) == 5_755_392 - unused
    assert len(model.state_dict()) == 74 - 4


def score_loop(query, frames, mask):
    """Slow reference: per query, per video, cosine / dot per valid frame, then max."""
    q_n, v_n = query.shape[0], frames.shape[0]
    cos, raw = torch.empty(q_n, v_n), torch.empty(q_n, v_n)
    for i in range(q_n):
        for j in range(v_n):
            valid = frames[j][mask[j] > 0]
            cos[i, j] = torch.nn.functional.cosine_similarity(query[i][None], valid, eps=1e-12).max()
            raw[i, j] = (valid @ query[i]).max()
    return cos, raw


def test_score_level_against_loop():
    g = torch.Generator().manual_seed(0)
    query, frames = torch.randn(7, 8, generator=g), torch.randn(4, 5, 8, generator=g)
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    out = score_level(query, frames, mask)
    cos, raw = score_loop(query, frames, mask)
    torch.testing.assert_close(out.video_scores, cos)
    torch.testing.assert_close(out.video_scores_raw, raw)
    assert (out.frame_scores[:, 1, 3:] == -1e10).all()
    torch.testing.assert_close(cosine_video_scores(query, normalize_frames(frames, mask)), cos)


def test_padding_does_not_change_scores():
    """Extra padded frames and tokens leave every score unchanged (eval mode)."""
    torch.manual_seed(0)
    model = DLDKD(ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2)).eval()
    vf, qf = torch.randn(3, 4, 6), torch.randn(2, 3, 5)
    vm, qm = torch.ones(3, 4), torch.ones(2, 3)
    pad_v = torch.cat([vf, torch.randn(3, 2, 6)], dim=1)
    pad_q = torch.cat([qf, torch.randn(2, 4, 5)], dim=1)
    pad_vm = torch.cat([vm, torch.zeros(3, 2)], dim=1)
    pad_qm = torch.cat([qm, torch.zeros(2, 4)], dim=1)
    with torch.no_grad():
        a, b = model.score(vf, vm, qf, qm), model.score(pad_v, pad_vm, pad_q, pad_qm)
    for name in a:
        torch.testing.assert_close(a[name]["frame"].video_scores, b[name]["frame"].video_scores, rtol=1e-5, atol=1e-5)
