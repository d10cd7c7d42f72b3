"""Tests of the demo dataset generator (method/demo_data.py)."""

import os

import h5py
import numpy as np
import pytest
from synthetic import read_tree

from method.data import build_split, collate_train, read_caption_file
from method.data import demo as demo_data
from method.data.bigfile import BigFile
from method.data.moment_file import moments_path, read_moments

N_VIDEOS = 60



@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    demo_data.generate(root, "tvr", N_VIDEOS, seed=0)
    return root


def test_generator_is_deterministic(demo_root, tmp_path):
    demo_data.generate(str(tmp_path / "again"), "tvr", N_VIDEOS, seed=0)
    first, second = read_tree(demo_root), read_tree(str(tmp_path / "again"))
    assert sorted(first) == sorted(second)
    assert all(first[k] == second[k] for k in first)
    demo_data.generate(str(tmp_path / "other"), "tvr", N_VIDEOS, seed=1)
    other = read_tree(str(tmp_path / "other"))
    assert other["tvr/FeatureData/i3d_resnet/feature.bin"] != first["tvr/FeatureData/i3d_resnet/feature.bin"]


def test_released_layout(demo_root):
    base = os.path.join(demo_root, "tvr")
    for rel in ("TextData/tvrtrain.caption.txt", "TextData/tvrval.caption.txt", "TextData/tvrtest.caption.txt",
                "TextData/roberta_tvr_query_feat.hdf5", "TextData/clip_ViT_B_32_tvr_query_feat.hdf5",
                "FeatureData/new_clip_vit_32_tvr_vid_features.hdf5",
                "FeatureData/i3d_resnet/feature.bin", "FeatureData/i3d_resnet/shape.txt",
                "FeatureData/i3d_resnet/id.txt", "FeatureData/i3d_resnet/video2frames.txt"):
        assert os.path.isfile(os.path.join(base, rel)), rel
    bf = BigFile(os.path.join(base, "FeatureData", "i3d_resnet"))
    n_frames = [bf.n_frames(v) for v in bf.keys()]
    cfg = demo_data.DemoConfig()
    assert len(n_frames) == N_VIDEOS and len(set(n_frames)) > 1
    assert cfg.min_frames <= min(n_frames) and max(n_frames) <= cfg.max_frames
    with h5py.File(os.path.join(base, "TextData", "clip_ViT_B_32_tvr_query_feat.hdf5"), "r") as f:
        keys = list(f)
        shapes = {f[k].shape for k in keys}
    assert any("#enc#" in k for k in keys) and any("#enc#" not in k for k in keys)
    assert shapes == {(demo_data.DemoConfig.teacher_dim,), (1, demo_data.DemoConfig.teacher_dim)}
    with h5py.File(os.path.join(base, "FeatureData", "new_clip_vit_32_tvr_vid_features.hdf5"), "r") as f:
        assert sum(f[v].shape[0] != bf.n_frames(v) for v in f) > 0


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_output_passes_check_and_loads(demo_root, split):
    s = build_split(demo_root, "tvr", "i3d_resnet", split, True, 128, 30)
    cfg = demo_data.DemoConfig()
    assert (s.visual_dim, s.text_dim, s.teacher_dim) == (cfg.visual_dim, cfg.text_dim, cfg.teacher_dim)
    assert all("#enc#" in c for c in s.captions.cap_ids)
    ds = s.train_dataset()
    batch = collate_train([ds[i] for i in range(min(8, len(ds)))])
    assert batch["video_feat"].shape[2] == cfg.visual_dim
    assert batch["teacher_video_feat"].shape[:2] == batch["video_feat"].shape[:2]
    assert len(s.query_dataset()) == len(s.captions) and len(s.video_dataset()) == len(s.captions.video_ids)


def test_other_collection_uses_plain_caption_ids(tmp_path):
    info = demo_data.generate(str(tmp_path), "activitynet", 20, seed=3, split_fractions=(0.7, 0.15, 0.15))
    assert info["splits"] == {"train": 14, "val": 3, "test": 3}
    s = build_split(str(tmp_path), "activitynet", "i3d", "train", True, 128, 30)
    assert not any("#enc#" in c for c in s.captions.cap_ids)


def _recall_at(scores, labels, k):
    pos = scores[np.arange(len(labels)), labels]
    return np.mean((scores >= pos[:, None]).sum(1) <= k)


def _max_cosine(queries, videos):
    """(Q, D) and V arrays (n_v, D) -> (Q, V) max over frames of the cosine."""
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.stack([(qn @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T).max(1) for v in videos], 1)


def test_data_carries_structure(demo_root):
    split = build_split(demo_root, "tvr", "i3d_resnet", "train", True, 128, 30)
    items = [split.train_dataset()[i] for i in range(len(split.captions.video_ids))]
    labels = np.repeat(np.arange(len(items)), [len(it["cap_ids"]) for it in items])
    chance_at_5 = 5 / len(items)
    # The teacher localises moments: its own retrieval is far above chance.
    teacher = _max_cosine(np.concatenate([it["teacher_query_feat"] for it in items]),
                          [it["teacher_video_feat"] for it in items])
    assert _recall_at(teacher, labels, 5) > 5 * chance_at_5
    # Student frames carry the concept through the fixed projection, under noise.
    world = demo_data._World(demo_data.DemoConfig(), np.random.default_rng(0))
    concept = {}
    for cap_id, text in split.captions.captions.items():
        words = text.split()
        action = next(w for w in words if w in world.actions)
        obj = next(w for w in words if w in world.objects)
        concept[cap_id] = world.actions.index(action) * len(world.objects) + world.objects.index(obj)
    oracle = np.stack([world.concept_latent[concept[c]] @ world.student_proj for it in items for c in it["cap_ids"]])
    assert _recall_at(_max_cosine(oracle, [it["video_feat"] for it in items]), labels, 5) > 5 * chance_at_5
    # The teacher's domain gap: merged concepts share one teacher latent, and the two
    # concepts of a merged pair share their object (the teacher is weak at actions).
    same = np.isclose(world.teacher_latent @ world.teacher_latent.T, 1.0)
    assert (same.sum(1) == 2).sum() == world.n_merged > 0
    first, second = np.nonzero(np.triu(same, 1))
    n_obj = len(world.objects)
    assert np.array_equal(first % n_obj, second % n_obj) and np.all(first // n_obj != second // n_obj)
    assert sorted(map(tuple, np.sort(world.merged_pairs, 1))) == sorted(zip(first, second))


def test_merged_pairs_cooccur(tmp_path):
    """With partner_rate 1 every video shows one teacher-merged pair of concepts."""
    cfg = demo_data.DemoConfig(partner_rate=1.0)
    rng = np.random.default_rng(5)
    world = demo_data._World(cfg, rng)
    pairs = {frozenset(map(int, p)) for p in world.merged_pairs}
    for _ in range(20):
        student, teacher, concepts, spans, _ = demo_data._make_video(world, rng)
        assert len(set(concepts.tolist())) == len(concepts) >= cfg.min_moments
        assert any(frozenset((int(a), int(b))) in pairs for a in concepts for b in concepts if a != b)
        assert cfg.min_frames <= len(student) <= cfg.max_frames and student.shape[1] == cfg.visual_dim


def test_moments_file_gives_each_captions_moment(tmp_path):
    """Without student noise, a caption's frames [start, end) are its concept's frames and no others."""
    cfg = demo_data.DemoConfig()
    demo_data.generate(str(tmp_path), "tvr", 30, seed=4, student_snr=1e6)
    moments = read_moments(moments_path(str(tmp_path), "tvr"))
    world = demo_data._World(cfg, np.random.default_rng(4))
    bf = BigFile(str(tmp_path / "tvr" / "FeatureData" / "i3d_resnet"))
    n_captions = 0
    for split in ("train", "val", "test"):
        captions = read_caption_file(str(tmp_path / "tvr" / "TextData" / f"tvr{split}.caption.txt"))
        for cap_id, text in captions.captions.items():
            m = moments[cap_id]
            assert m.duration is None and 0 <= m.start < m.end
            words = text.split()
            action = next(w for w in words if w in world.actions)
            obj = next(w for w in words if w in world.objects)
            concept = world.actions.index(action) * cfg.n_objects + world.objects.index(obj)
            expected = world.concept_latent[concept] @ world.student_proj
            frames = bf.get(cap_id.split("#")[0])
            assert m.end <= len(frames)
            is_concept = np.isclose(frames, expected, atol=1e-3).all(1)
            assert np.flatnonzero(is_concept).tolist() == list(range(int(m.start), int(m.end))), cap_id
            n_captions += 1
    assert n_captions == len(moments)


def test_moment_spans_are_disjoint_and_cover_every_moment():
    rng = np.random.default_rng(6)
    world = demo_data._World(demo_data.DemoConfig(), rng)
    for _ in range(200):
        student, _, concepts, spans, _ = demo_data._make_video(world, rng)
        assert spans.shape == (len(concepts), 2)
        assert (spans[:, 0] < spans[:, 1]).all() and (spans[1:, 0] >= spans[:-1, 1]).all()
        assert spans[-1, 1] <= len(student)


def test_cli_prints_summary(tmp_path, capsys):
    demo_data.main([str(tmp_path), "--videos", "12", "--seed", "2"])
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "12 videos" in out
    assert os.path.isdir(tmp_path / "tvr" / "FeatureData" / "i3d_resnet")


def test_second_teacher_changes_no_other_file_and_merges_other_concepts(tmp_path):
    """--second_teacher adds two files; every other file is byte-identical; its gap merges same-action concepts."""
    plain, both = tmp_path / "plain", tmp_path / "both"
    demo_data.generate(str(plain), "tvr", 40, seed=3)
    info = demo_data.generate(str(both), "tvr", 40, seed=3, second_teacher="other")
    assert info["second_teacher_merged"] == info["teacher_merged"]
    a, b = read_tree(plain / "tvr"), read_tree(both / "tvr")
    assert set(b) - set(a) == {"FeatureData/other_tvr_vid_features.hdf5", "TextData/other_tvr_query_feat.hdf5"}
    assert all(a[k] == b[k] for k in a)
    world = demo_data._World(demo_data.DemoConfig(), np.random.default_rng(3))
    second = demo_data.SecondTeacher(world, 3)
    n_objects = world.cfg.n_objects
    same = np.all(second.latent[:, None] == second.latent[None], axis=-1) & ~np.eye(len(second.latent), dtype=bool)
    i, j = np.nonzero(same)
    assert len(i) and np.all(i // n_objects == j // n_objects)  # one action, two objects
    first = np.all(world.teacher_latent[:, None] == world.teacher_latent[None], axis=-1)
    assert np.all(i % n_objects != j % n_objects) and not first[i, j].any()
