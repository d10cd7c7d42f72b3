"""Several teachers at once (--teachers): the mixture target, the combined stores, whole runs."""
import csv
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import write_collection, write_h5

from method import train
from method.data import DataError, build_split
from method.data.stores import H5Store, TeacherFrames, TeacherSentences
from method.losses import kl_distill_loss
from method.models.teacher import PrecomputedTeacher, mixture_scores

ARGS = ["--collection", "tvr", "--visual_feature", "i3d_resnet", "--device", "cpu", "--num_workers", "0",
        "--hidden_size", "16", "--n_heads", "2", "--bsz", "3", "--margin", "0.1", "--kd_schedule", "exp_decay",
        "--seed", "7", "--eval_query_bsz", "4", "--eval_video_bsz", "3", "--n_epoch", "2"]


def loop_mixture_kl(student, teachers, lengths, temperature):
    """Sum over queries of KL(mean_k softmax(t_k / T) || softmax(s / T)) over each query's valid frames."""
    total = 0.0
    for q, n in enumerate(lengths):
        p = torch.stack([torch.softmax(t[q, :n] / temperature, 0) for t in teachers]).mean(0)
        log_q = torch.log_softmax(student[q, :n] / temperature, 0)
        total = total + (p * (p.log() - log_q)).sum()
    return total


def test_mixture_kl_against_loop_and_one_teacher_twice():
    g = torch.Generator().manual_seed(0)
    student, t1, t2 = (torch.rand(5, 7, generator=g) * 2 - 1 for _ in range(3))
    lengths = [7, 3, 5, 1, 6]
    mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).float()
    mixed = kl_distill_loss(student, torch.stack([t1, t2]), mask, 0.2)
    torch.testing.assert_close(mixed, loop_mixture_kl(student, [t1, t2], lengths, 0.2))
    torch.testing.assert_close(kl_distill_loss(student, torch.stack([t1, t1]), mask, 0.2),
                               kl_distill_loss(student, t1, mask, 0.2))
    assert not torch.allclose(mixed, kl_distill_loss(student, t1, mask, 0.2))


def test_mixture_scores_softmax_is_the_mean_of_softmaxes():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 4, 6, generator=g) * 5
    for dim in (0, 1):
        torch.testing.assert_close(torch.softmax(mixture_scores(scores, dim), dim),
                                   torch.softmax(scores, dim + 1).mean(0))
    one = scores[0]
    assert mixture_scores(one, 1) is one  # one teacher: its own scores


def test_teacher_scores_split_the_concatenated_features():
    g = torch.Generator().manual_seed(2)
    text, frames = torch.randn(4, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1])
    both = PrecomputedTeacher([2, 3]).frame_scores(text, frames, labels)
    assert both.shape == (2, 4, 3)
    torch.testing.assert_close(both[1], PrecomputedTeacher().frame_scores(text[:, 2:], frames[..., 2:], labels))
    raw = PrecomputedTeacher([2, 3]).video_scores_raw(text, frames, torch.ones(2, 3))
    torch.testing.assert_close(raw[0], PrecomputedTeacher().video_scores_raw(text[:, :2], frames[..., :2],
                                                                             torch.ones(2, 3)))


def test_combined_stores_align_and_look_up_both_id_forms(tmp_path):
    a = {"v0": np.arange(8, dtype=np.float32).reshape(4, 2)}
    b = {"v0": np.ones((2, 3), np.float32)}  # another frame count: resampled onto the first teacher's 4 frames
    write_h5(tmp_path / "a.h5", a)
    write_h5(tmp_path / "b.h5", b)
    frames = TeacherFrames([H5Store(str(tmp_path / "a.h5")), H5Store(str(tmp_path / "b.h5"))])
    out = frames.get("v0")
    assert out.shape == (4, 5) and frames.dims == [2, 3] and frames.n_frames("v0") == 4
    np.testing.assert_array_equal(out[:, :2], a["v0"])
    write_h5(tmp_path / "s1.h5", {"v0#enc#0": np.ones((1, 2), np.float32)})
    write_h5(tmp_path / "s2.h5", {"v0#0": np.full(3, 2.0, np.float32)})
    sentences = TeacherSentences([H5Store(str(tmp_path / "s1.h5")), H5Store(str(tmp_path / "s2.h5"))])
    np.testing.assert_array_equal(sentences.get("v0#enc#0"), [1, 1, 2, 2, 2])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny collection with a second teacher file that is a copy of the first ('copy')."""
    root = tmp_path_factory.mktemp("data")
    write_collection(str(root), n_videos=9)
    base = root / "tvr"
    shutil.copy(base / "FeatureData" / "new_clip_vit_32_tvr_vid_features.hdf5",
                base / "FeatureData" / "copy_tvr_vid_features.hdf5")
    shutil.copy(base / "TextData" / "clip_ViT_B_32_tvr_query_feat.hdf5", base / "TextData" / "copy_tvr_query_feat.hdf5")
    return str(root)


def losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [(float(r["loss"]), float(r["kd"])) for r in csv.DictReader(f)]


def test_one_teacher_given_twice_equals_that_teacher_alone(data, tmp_path):
    one = tmp_path / "one"
    train.main(["--root_path", data, "--results_dir", str(one), *ARGS])
    named = tmp_path / "named"
    train.main(["--root_path", data, "--results_dir", str(named), *ARGS, "--teachers", "clip"])
    twice = tmp_path / "twice"
    train.main(["--root_path", data, "--results_dir", str(twice), *ARGS, "--teachers", "clip,copy"])
    weights = [torch.load(d / "latest.ckpt", weights_only=True)["model"] for d in (one, named, twice)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # --teachers clip is the default
    for a, b in zip(losses(one), losses(twice)):  # the mixture of one distribution with itself, up to rounding
        assert b == pytest.approx(a, rel=1e-5)
    for k, w in weights[0].items():
        torch.testing.assert_close(weights[2][k], w, rtol=1e-4, atol=1e-5, msg=k)


def test_two_teachers_in_dldkdpp_and_a_missing_teacher_file(data, tmp_path, capsys):
    base = tmp_path / "other"
    shutil.copytree(data, base)
    with h5py.File(base / "tvr" / "FeatureData" / "copy_tvr_vid_features.hdf5", "a") as f:
        for key in list(f):  # another teacher: the same frames, reversed in time
            frames = f[key][()]
            del f[key]
            f.create_dataset(key, data=frames[::-1].copy())
    run_dir = tmp_path / "pp"
    result = train.main(["--root_path", str(base), "--results_dir", str(run_dir), *ARGS, "--recipe", "dldkdpp",
                         "--teachers", "clip,copy"])
    assert np.isfinite(result["t2v"]["fused"]["sumr"])
    packed = tmp_path / "packed"  # the split packed once per run carries both teachers' features side by side
    train.main(["--root_path", str(base), "--results_dir", str(packed), *ARGS, "--recipe", "dldkdpp",
                "--teachers", "clip,copy", "--preload", "ram"])
    assert losses(packed) == losses(run_dir)
    (base / "tvr" / "TextData" / "copy_tvr_query_feat.hdf5").unlink()
    with pytest.raises(DataError, match="copy_tvr_query_feat.hdf5"):
        build_split(str(base), "tvr", "i3d_resnet", "train", True, 128, 30, teachers=["clip", "copy"])
    with pytest.raises(SystemExit):
        train.main(["--root_path", str(base), *ARGS, "--teachers", "clip", "--no_teacher"])
    assert "--teachers names the teachers" in capsys.readouterr().err


def test_kd_term_of_two_teachers_is_their_mixture(data):
    """The training batch of two teachers carries both, and the distillation target mixes their distributions."""
    split = build_split(data, "tvr", "i3d_resnet", "train", True, 128, 30, teachers=["clip", "copy"])
    assert split.teacher_dims == [4, 4]
    item = split.train_dataset()[0]
    np.testing.assert_array_equal(item["teacher_video_feat"][:, :4], item["teacher_video_feat"][:, 4:])
    cos = PrecomputedTeacher(split.teacher_dims).frame_scores(
        torch.from_numpy(item["teacher_query_feat"]), torch.from_numpy(item["teacher_video_feat"])[None],
        torch.zeros(len(item["cap_ids"]), dtype=torch.long))
    torch.testing.assert_close(cos[0], cos[1])
    torch.testing.assert_close(F.softmax(mixture_scores(cos, 1), -1), F.softmax(cos[0], -1))
