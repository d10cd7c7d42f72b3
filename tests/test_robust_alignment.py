"""``--robust_alignment``: RAL's probabilistic part on the dldkd and gmmformer students (ours; docs/students.md,
"RAL on other students"). Off: no new parameter, output or term (the recorded DL-DKD losses of test_train.py and
the GMMFormer golden of test_gmmformer.py run with it off). On: 2-epoch runs through ``method.train`` with named
finite MIL / VIB terms per branch, the flag stored and reloaded by ``method.eval``, a bit-identical ``--resume``,
and MIL / VIB equal to ``method.losses.ral`` on the same means, log sigmas and noise (several processes:
tests/test_distributed.py, case ``dldkd_ra``)."""
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_train import assert_resume_is_exact, read_metrics, run

from method import eval as evaluate
from method.config.flags import build_train_parser, parse_train_args
from method.config.settings import train_settings
from method.losses import ral as ral_losses
from method.models.model import DLDKD, ModelConfig
from method.models.students import student_class
from method.models.students.probabilistic import (
    GAUSSIAN_OUTPUTS,
    RobustAlignmentLosses,
    support_set,
    text_pooling,
    video_pooling,
)
from method.models.students.ral import RALLosses
from method.parallel.distributed import Dist
from method.training import loop
from method.training.schedules import epoch_settings

TINY = ["--root_path", "/r", "--collection", "tvr", "--hidden_size", "8", "--n_heads", "2", "--input_drop", "0",
        "--drop", "0"]
RECIPES = {"dldkd": [], "gmmformer": ["--recipe", "gmmformer"]}


def settings(*extra):
    return train_settings(parse_train_args([*TINY, *extra]))


# --------------------------------------------------------------------------- #
# off: nothing changes
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("student", RECIPES)
def test_off_by_default_adds_no_parameter_output_or_term(student):
    s = settings(*RECIPES[student])
    assert s.model.student == student and s.model.student_cfg.robust_alignment is False
    assert s.loss.objective.output_terms is None and not s.loss.objective.whole_batch
    torch.manual_seed(0)
    model = DLDKD(s.model.with_inputs(6, 5))
    assert model.output_keys == () and not any("robust_alignment" in k for k in model.state_dict())
    # a configuration stored before the flag existed (no "robust_alignment" key) is the same model, off
    stored = model.cfg.to_dict()
    del stored["student_config"]["robust_alignment"]
    torch.manual_seed(0)
    old = DLDKD(ModelConfig.from_dict(stored))
    assert old.cfg == model.cfg
    a, b = model.state_dict(), old.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flags_are_shared_with_ral_with_its_defaults():
    """mil_weight, vib_weight, n_samples, vib_log_std, vib_use_mean are one declaration (RobustAlignmentLosses)
    for dldkd, gmmformer and ral: one flag each, RAL's defaults."""
    for name in ("dldkd", "gmmformer", "ral"):
        assert issubclass(student_class(name).Losses, RobustAlignmentLosses), name
    assert issubclass(RALLosses, RobustAlignmentLosses)
    ral_defaults = {f.name: f.default for f in dataclasses.fields(RALLosses)}
    assert {f.name: f.default for f in dataclasses.fields(RobustAlignmentLosses)} == {
        k: ral_defaults[k] for k in ("mil_weight", "vib_weight", "vib_log_std", "vib_use_mean", "n_samples")}
    assert (ral_defaults["mil_weight"], ral_defaults["vib_weight"], ral_defaults["n_samples"]) == (4e-3, 2.5e-4, 6)
    text = build_train_parser().format_help()
    assert "--robust_alignment" in text and "--mil_weight" in text
    with pytest.raises(SystemExit):  # not a setting of the other students
        parse_train_args([*TINY, "--recipe", "gmmformer_v2", "--robust_alignment"])


@pytest.mark.parametrize("student", RECIPES)
def test_on_the_retrieval_path_is_the_same_network(student):
    """The switch adds heads beside the student: with the same weights, the pooled queries and the video levels are
    those of the student without it (gmmformer then encodes without buckets: the same numbers)."""
    on = DLDKD(settings(*RECIPES[student], "--robust_alignment").model.with_inputs(6, 5)).eval()
    off = DLDKD(settings(*RECIPES[student]).model.with_inputs(6, 5)).eval()
    state = {k: v for k, v in on.state_dict().items() if ".robust_alignment." not in k}
    off.load_state_dict(state)
    assert set(on.state_dict()) - set(state) and all(".robust_alignment." in k for k in set(on.state_dict()) - set(state))
    g = torch.Generator().manual_seed(1)
    frames, clips = torch.randn(3, 7, 6, generator=g), torch.randn(3, 32, 6, generator=g)
    fmask = torch.tensor([[1.0] * 7, [1.0] * 4 + [0.0] * 3, [1.0] * 2 + [0.0] * 5])
    text, tmask = torch.randn(4, 5, 5, generator=g), torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2] * 2)
    with torch.no_grad():
        for branch in on.branch_names:
            a, b = on.encode_queries(text, tmask)[branch], off.encode_queries(text, tmask)[branch]
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
            va = on.encode_videos(frames, fmask, clips)[branch]
            vb = off.encode_videos(frames, fmask, clips)[branch]
            for level in va:
                torch.testing.assert_close(va[level], vb[level], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- #
# on: the Gaussians and MIL / VIB computed directly
# --------------------------------------------------------------------------- #
def _tiny_batch():
    g = torch.Generator().manual_seed(3)
    lengths, tokens = [7, 5, 3, 6], [5, 2, 4, 5, 3, 1, 4]
    return {"video_feat": torch.randn(4, 7, 6, generator=g),
            "video_mask": torch.tensor([[1.0] * n + [0.0] * (7 - n) for n in lengths]),
            "query_feat": torch.randn(7, 5, 5, generator=g),
            "query_mask": torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in tokens]),
            "query_labels": torch.tensor([0, 0, 0, 1, 1, 2, 3])}


def _direct_gaussians(student, proj, b):
    """The text and video Gaussians of one branch computed by hand from the student's layers (RAL.md 2.4-2.8):
    its query encoder's tokens before pooling, its frame-level outputs, support sets of 26 captions."""
    tokens = student.query_encoder(student.query_pos_embed(proj(b["query_feat"])), b["query_mask"])
    frames, mask = b["video_feat"], b["video_mask"]
    if hasattr(student, "mapping_linear"):  # dldkd: the scored per-frame outputs
        frames = student.mapping_linear(student.frame_encoder(student.frame_pos_embed(student.frame_input_proj(
            frames)), mask))
    else:  # gmmformer: the frame encoder's per-frame outputs before its pooling
        x = student.frame_pos_embed(student.frame_input_proj(frames))
        frames = student.frame_encoder_2(student.frame_encoder_1(x, mask, None, 7), mask, None, 7)
    support, smask = support_set(tokens, b["query_mask"], b["query_labels"], 4, capacity=26)  # RAL's capacity
    heads = student.robust_alignment
    out = {}
    for name, pooled, x, m in (("text", text_pooling(support, smask), support, smask),
                               ("video", video_pooling(frames, mask), frames, mask)):
        out[f"{name}_mean"] = F.normalize(getattr(heads, f"pie_net_{name}")(pooled, x, m)["out"], dim=-1)
        out[f"{name}_logsigma"] = getattr(heads, f"uncertain_net_{name}")(pooled, x, m)["logsigma"]
    return out


@pytest.mark.parametrize("student", RECIPES)
def test_mil_and_vib_equal_a_direct_computation(student, monkeypatch):
    """One training step (``loop.train_step``): the forward's means and log sigmas are the Gaussians computed by
    hand (masked: RAL's 26-caption support capacity gives the same), and each branch's ``mil`` / ``vib`` terms are
    ``method.losses.ral``'s ``mil_loss`` / ``vib_terms`` on them with the noise the objective drew."""
    s = settings(*RECIPES[student], "--robust_alignment", "--mil_weight", "0.5", "--vib_weight", "0.1",
                 "--no_teacher")
    assert s.loss.objective.whole_batch
    torch.manual_seed(0)
    model = DLDKD(s.model.with_inputs(6, 5)).train()
    b = _tiny_batch()
    if model.needs_clips:
        b["clip_feat"] = torch.randn(4, 32, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        emb = model(b["video_feat"], b["video_mask"], b["query_feat"], b["query_mask"], b.get("clip_feat"),
                    query_labels=b["query_labels"])
        for branch in model.branch_names:
            net = getattr(model, branch)
            proj = model.inheritance.query_input_proj if model.cfg.share_query_proj else net.query_input_proj
            direct = _direct_gaussians(net, proj, b)
            for key in GAUSSIAN_OUTPUTS:
                torch.testing.assert_close(emb[key][branch], direct[key], rtol=1e-5, atol=1e-6)
    drawn = []
    real = ral_losses.sample_gaussian

    def record(mean, logsigma, n, generator=None, eps=None):
        samples, eps = real(mean, logsigma, n, generator, eps)
        drawn.append(eps)
        return samples, eps
    monkeypatch.setattr(ral_losses, "sample_gaussian", record)
    optimizer, scheduler = s.optim.build(model, 10)
    r = loop.Run(model=model, forward=model, loader=None, optimizer=optimizer, scheduler=scheduler,
                 loss_fn=s.loss.build(), teacher=None, dist=Dist(), second_queries=s.loss.objective.needs_second_queries)
    terms = loop.train_step(r, b, epoch_settings(s.schedule, 0))
    suffixes = {"dldkd": ("_inh", "_exp"), "gmmformer": ("",)}[student]
    assert len(drawn) == 2 * len(suffixes)
    for suffix, branch in zip(suffixes, model.branch_names):
        eps_t, eps_v = drawn.pop(0), drawn.pop(0)
        assert eps_t.shape == (4, 6, 8)  # V, K = n_samples, d
        text = emb["text_mean"][branch][:, None] + eps_t * emb["text_logsigma"][branch].exp()[:, None]
        video = emb["video_mean"][branch][:, None] + eps_v * emb["video_logsigma"][branch].exp()[:, None]
        mil = 0.5 * ral_losses.mil_loss(text, video)
        vib = 0.1 * ral_losses.vib_terms(video, emb["video_logsigma"][branch], text,
                                         emb["text_logsigma"][branch])["vib"]
        assert terms[f"mil{suffix}"].item() == pytest.approx(mil.item(), rel=1e-5)
        assert terms[f"vib{suffix}"].item() == pytest.approx(vib.item(), rel=1e-5)
    # the heads are trained by MIL and VIB: every one of their parameters got a gradient
    heads = {k: p for k, p in model.named_parameters() if ".robust_alignment." in k}
    assert heads and all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.values())


# --------------------------------------------------------------------------- #
# on: runs through method.train
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("student", RECIPES)
def test_two_epochs_give_named_finite_terms_and_reload(data, tmp_path, student):
    """``--recipe iccv`` (both branches, each its own mil / vib) and ``--recipe gmmformer`` (one network: mil, vib):
    finite named terms summing to the loss, the flag in opt.json and the checkpoint, the heads in its weights, and
    ``python -m method.eval`` on the run folder gives the run's test numbers."""
    run_dir = tmp_path / student
    result = run(data, run_dir, "--n_epoch", "2", *RECIPES[student], "--robust_alignment")
    assert json.loads((run_dir / "opt.json").read_text())["robust_alignment"] is True
    rows = read_metrics(run_dir)
    names = {"dldkd": ["mil_inh", "vib_inh", "mil_exp", "vib_exp"], "gmmformer": ["mil", "vib"]}[student]
    for row in rows:
        assert set(names) <= set(row)
        assert all(math.isfinite(float(row[k])) and float(row[k]) != 0 for k in names)
        terms = [k for k in row if k not in ("epoch", "lr", "kd_factor", "hard_negative", "loss")
                 and not k.startswith("val_") and not k.endswith("_seconds")]
        assert float(row["loss"]) == pytest.approx(sum(float(row[k]) for k in terms), rel=1e-5)
    ckpt = torch.load(run_dir / "model.ckpt", weights_only=True)
    assert ckpt["model_config"]["student"] == student
    assert ckpt["model_config"]["student_config"]["robust_alignment"] is True
    branches = ("inheritance", "exploration") if student == "dldkd" else ("inheritance",)
    for branch in branches:
        assert f"{branch}.robust_alignment.pie_net_text.fc.weight" in ckpt["model"]
    again = evaluate.main(["--model_dir", str(run_dir), "--device", "cpu", "--num_workers", "0"])
    assert again["t2v"] == result["t2v"]


@pytest.mark.parametrize("student", RECIPES)
def test_resume_gives_the_uninterrupted_result(data, tmp_path, monkeypatch, student):
    assert_resume_is_exact(data, tmp_path, monkeypatch, *RECIPES[student], "--robust_alignment",
                           "--hard_negative_start_epoch", "1")
