"""Tests of method/bigfile.py and method/data.py on small files written here."""

import ast
import os
import random

import h5py
import numpy as np
import pytest
import torch
from synthetic import DQ, DT, DV, write_bigfile, write_collection, write_h5  # noqa: E402
from torch.utils.data import DataLoader

from method.data import (
    DataError,
    H5Store,
    QueryDataset,
    TrainDataset,
    align_frames,
    build_split,
    caption_key_candidates,
    check_split,
    collate_queries,
    collate_train,
    collate_videos,
    dataset_paths,
    l2_normalize,
    open_video_store,
    read_caption_file,
    reduce_frames,
    resolve_caption_keys,
    seed_worker,
    student_frames,
    student_tokens,
    teacher_frames,
    uniform_pool,
)
from method.data.bigfile import BigFile, parse_video2frames


@pytest.fixture
def collection(tmp_path):
    raw = write_collection(str(tmp_path))
    return str(tmp_path), raw


# ----------------------------------------------------------------------------
# BigFile and video2frames
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("shuffle_rows", [False, True])
@pytest.mark.parametrize("quote", ["'", '"'])
def test_bigfile_reads_written_values(tmp_path, quote, shuffle_rows):
    rng = np.random.default_rng(1)
    expected = write_bigfile(str(tmp_path / "bf"), {"a": 5, "b": 1, "c": 12}, rng, quote, shuffle_rows)
    bf = BigFile(str(tmp_path / "bf"))
    assert (bf.n_rows, bf.dim) == (18, DV)
    assert bf.keys() == {"a", "b", "c"}
    assert isinstance(bf.memmap, np.memmap)
    for vid, values in expected.items():
        got = bf.read_video(vid)
        assert got.dtype == np.float32 and not isinstance(got, np.memmap)
        np.testing.assert_array_equal(got, values)
    with pytest.raises(DataError, match="video2frames.txt"):
        bf.read_video("nope")


def test_bigfile_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(2)
    folder = str(tmp_path / "bf")
    write_bigfile(folder, {"a": 4, "b": 3}, rng)
    with open(os.path.join(folder, "shape.txt"), "w") as f:
        f.write(f"8 {DV}\n")
    with pytest.raises(DataError, match=r"shape\.txt.*8 x 6"):
        BigFile(folder)
    write_bigfile(folder, {"a": 4, "b": 3}, rng)
    with open(os.path.join(folder, "video2frames.txt"), "w") as f:
        f.write("{'a': ['a_f0', 'ghost_1'], 'b': ['ghost_2']}")
    with pytest.raises(DataError, match=r"video2frames\.txt: 2 frame ids .*'ghost_1'"):
        BigFile(folder)
    os.remove(os.path.join(folder, "id.txt"))
    with pytest.raises(DataError, match=r"missing file .*id\.txt"):
        BigFile(folder)


def random_video2frames_text(rng, quote_mode):
    """A video2frames literal with varied spacing, quotes, empty lists, trailing commas."""
    entries = []
    for v in range(int(rng.integers(0, 30))):
        q = quote_mode if quote_mode != "mixed" else "'\""[int(rng.integers(2))]
        items = [f"{q}v{v}_{i}{q}" for i in range(int(rng.integers(0, 8)))]
        sep = [", ", ",", " ,\n  "][int(rng.integers(3))]
        trailing = "," if items and rng.random() < 0.2 else ""
        entries.append(f"{q}vid {v}-x{q} :[{sep.join(items)}{trailing}]")
    return "{" + ",\n".join(entries) + ("," if entries and rng.random() < 0.3 else "") + "}\n"


@pytest.mark.parametrize("quote_mode", ["'", '"', "mixed"])
def test_fast_video2frames_parser_equals_literal_eval(quote_mode):
    rng = np.random.default_rng(3)
    for _ in range(30):
        text = random_video2frames_text(rng, quote_mode)
        assert parse_video2frames(text) == ast.literal_eval(text)


def test_video2frames_fallback_and_safety():
    # Forms the regex path does not cover go through ast.literal_eval.
    text = "{'a': ['x\\'y', \"z\"], 'b': [1, 2], 'c': ('p',)}"
    assert parse_video2frames(text) == {"a": ["x'y", "z"], "b": ["1", "2"], "c": ["p"]}
    with pytest.raises(DataError, match="v2f.txt"):
        parse_video2frames("__import__('os').system('true')", "v2f.txt")
    with pytest.raises(DataError):
        parse_video2frames("{'a': ['x' 'y',, ]}")


# ----------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------

def slow_uniform_pool(x, n_out, linspace=True):
    """Reference: the released loop over segments; boundaries from linspace, or as (i / n_out) * n."""
    n = len(x)
    points = np.linspace(0, n, n_out + 1) if linspace else [i / n_out * n for i in range(n_out + 1)]
    b = np.round(points).astype(np.int64)
    b = np.minimum(b, n - 1)
    out = []
    for i in range(n_out):
        out.append(np.mean(x[b[i]:b[i + 1]], axis=0) if b[i] < b[i + 1] else x[b[i]])
    return np.stack(out)


@pytest.mark.parametrize("n", [129, 130, 200, 255, 256, 300, 1000])
def test_uniform_pool_matches_reference_loop(n):
    x = np.random.default_rng(n).standard_normal((n, 7))
    np.testing.assert_allclose(uniform_pool(x, 128), slow_uniform_pool(x, 128), rtol=0, atol=1e-12)
    x32 = x.astype(np.float32)
    assert uniform_pool(x32, 128).dtype == np.float32


def test_uniform_pool_ties_fall_as_in_the_authors_code_except_in_the_alignment():
    """300 -> 200 frames: segment 7 starts at 10.5, which the authors' (7 / 200) * 300 = 10.500000000000002
    rounds to 11; the exact linspace rounds it to 10 (half to even). The teacher alignment keeps linspace."""
    x = np.random.default_rng(0).standard_normal((300, 3))
    np.testing.assert_allclose(uniform_pool(x, 200), slow_uniform_pool(x, 200, linspace=False), atol=1e-12)
    np.testing.assert_allclose(uniform_pool(x, 200, exact_ties=True), slow_uniform_pool(x, 200), atol=1e-12)
    assert not np.allclose(uniform_pool(x, 200), uniform_pool(x, 200, exact_ties=True))
    np.testing.assert_allclose(uniform_pool(x, 200)[6], x[9:11].mean(0), atol=1e-12)
    np.testing.assert_allclose(align_frames(x, 200), slow_uniform_pool(x, 200), atol=1e-12)
    for n in range(129, 1200):  # to 128 the two rules agree
        assert (np.round(np.linspace(0, n, 129)) == np.round(np.arange(129) / 128 * n)).all(), n


def test_uniform_pool_never_uses_last_frame():
    x = np.zeros((200, 3))
    x[-1] = 1e6
    assert np.abs(uniform_pool(x, 128)).max() == 0


@pytest.mark.parametrize("n", [1, 5, 127, 128])
def test_reduce_frames_is_identity_up_to_max_len(n):
    x = np.random.default_rng(n).standard_normal((n, 3))
    assert reduce_frames(x, 128) is x


def test_golden_reduce_then_normalise(golden):
    for n in (129, 200, 300):
        x = golden[f"pool_in_{n}"]
        np.testing.assert_allclose(l2_normalize(reduce_frames(x, 128)), golden[f"pool_out_{n}"],
                                   rtol=0, atol=1e-12)
        out32 = student_frames(x.astype(np.float32), 128)
        assert out32.dtype == np.float32
        np.testing.assert_allclose(out32, golden[f"pool_out_{n}"], rtol=1e-5, atol=1e-6)


def test_l2_normalize_eps():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x), [[3 / 5.00001, 4 / 5.00001], [0, 0]])


def test_align_frames():
    t = np.arange(10, dtype=np.float64)[:, None] * np.ones((1, 2))
    assert align_frames(t, 10) is t
    np.testing.assert_array_equal(align_frames(t, 4), uniform_pool(t, 4))
    np.testing.assert_allclose(align_frames(t, 4)[:, 0], slow_uniform_pool(t, 4)[:, 0])
    # shorter: frame floor((i + 0.5) * 10 / 25)
    up = align_frames(t, 25)[:, 0]
    np.testing.assert_array_equal(up, np.floor((np.arange(25) + 0.5) * 10 / 25))
    np.testing.assert_array_equal(align_frames(t[:1], 3)[:, 0], [0, 0, 0])


def test_teacher_frames_follow_student_count():
    x = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    out = teacher_frames(x, 128, 128)
    np.testing.assert_allclose(out, uniform_pool(x.astype(np.float64), 128), rtol=1e-6)
    out = teacher_frames(x, 50, 128)  # reduce to 128, then pool to 50
    np.testing.assert_allclose(out, uniform_pool(uniform_pool(x.astype(np.float64), 128), 50), rtol=1e-6)
    assert teacher_frames(x[:20], 64, 128).shape == (64, 4)


def test_student_tokens_normalise_and_truncate():
    x = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
    out = student_tokens(x, 30)
    assert out.shape == (30, 5) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(out, l2_normalize(x)[:30])


# ----------------------------------------------------------------------------
# Caption files, paths, stores
# ----------------------------------------------------------------------------

def test_read_caption_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("v1#enc#0 a man walks\nv2#enc#0 b\n\nv1#enc#1 c  d\n")
    caps = read_caption_file(str(path))
    assert caps.cap_ids == ["v1#enc#0", "v2#enc#0", "v1#enc#1"]
    assert caps.video_ids == ["v1", "v2"]
    assert caps.video2caps == {"v1": ["v1#enc#0", "v1#enc#1"], "v2": ["v2#enc#0"]}
    assert caps.captions["v1#enc#1"] == "c  d"
    path.write_text("v1#0 fine\nv2#0\n")
    with pytest.raises(DataError, match=r"c\.txt, line 2"):
        read_caption_file(str(path))


def test_dataset_paths_and_teacher_override(tmp_path):
    p = dataset_paths("/r", "tvr", "i3d_resnet")
    assert p.captions["val"] == "/r/tvr/TextData/tvrval.caption.txt"
    assert p.text_feat == "/r/tvr/TextData/roberta_tvr_query_feat.hdf5"
    assert p.teacher_text_feat == "/r/tvr/TextData/clip_ViT_B_32_tvr_query_feat.hdf5"
    assert p.video_bigfile == "/r/tvr/FeatureData/i3d_resnet"
    assert p.video_hdf5 == "/r/tvr/FeatureData/i3d_resnet.hdf5"
    assert p.teacher_video_feat == "/r/tvr/FeatureData/new_clip_vit_32_tvr_vid_features.hdf5"
    p = dataset_paths("/r", "tvr", "i3d_resnet", teacher_video_file="blip_vid.hdf5",
                      teacher_query_file="/abs/q.hdf5")
    assert p.teacher_video_feat == "/r/tvr/FeatureData/blip_vid.hdf5"
    assert p.teacher_text_feat == "/abs/q.hdf5"


def test_hdf5_video_store_when_no_bigfile(tmp_path):
    raw = write_collection(str(tmp_path), bigfile=False)
    store = open_video_store(dataset_paths(str(tmp_path), "tvr", "i3d_resnet"))
    assert isinstance(store, H5Store) and store.dim == DV
    for vid, frames in raw["frames"].items():
        np.testing.assert_array_equal(store.get(vid), frames)
    split = build_split(str(tmp_path), "tvr", "i3d_resnet", "train", True, 128, 30)
    item = split.train_dataset()[0]
    np.testing.assert_allclose(item["video_feat"], student_frames(raw["frames"]["vid0"], 128))


def test_bigfile_store_preferred(collection):
    root, raw = collection
    store = open_video_store(dataset_paths(root, "tvr", "i3d_resnet"))
    assert isinstance(store, BigFile)
    for vid, frames in raw["frames"].items():
        np.testing.assert_array_equal(store.get(vid), frames)


def test_caption_key_fallback_both_directions(tmp_path):
    assert caption_key_candidates("v_a#enc#3") == ["v_a#enc#3", "v_a#3"]
    assert caption_key_candidates("v_a#3") == ["v_a#3", "v_a#enc#3"]
    path = str(tmp_path / "q.hdf5")
    write_h5(path, {"v1#0": np.ones(2), "v2#enc#1": np.ones(2), "v3#enc#0": np.ones(2)})
    mapping, missing = resolve_caption_keys(["v1#enc#0", "v2#1", "v3#enc#0", "v4#0"], H5Store(path))
    assert mapping == {"v1#enc#0": "v1#0", "v2#1": "v2#enc#1", "v3#enc#0": "v3#enc#0"}
    assert missing == ["v4#0"]


# ----------------------------------------------------------------------------
# Datasets and collate
# ----------------------------------------------------------------------------

def test_train_dataset_items(collection):
    root, raw = collection
    split = build_split(root, "tvr", "i3d_resnet", "train", True, 128, 30)
    assert (split.visual_dim, split.text_dim, split.teacher_dim) == (DV, DQ, DT)
    with pytest.raises(ValueError, match="both teacher stores"):
        TrainDataset(split.captions, split.video_store, split.text_store, split.teacher_text_store, None)
    ds = split.train_dataset()
    assert len(ds) == 7
    for i in range(len(ds)):
        item = ds[i]
        vid = item["video_id"]
        assert vid == f"vid{i}"
        assert item["cap_ids"] == split.captions.video2caps[vid]
        np.testing.assert_allclose(item["video_feat"], student_frames(raw["frames"][vid], 128))
        n = len(item["video_feat"])
        assert n == min(128, len(raw["frames"][vid]))
        assert item["teacher_video_feat"].shape == (n, DT)
        np.testing.assert_allclose(item["teacher_video_feat"], teacher_frames(raw["teacher"][vid], n, 128))
        # The CLIP sentence came through the key fallback and the (1, Dt) squeeze.
        np.testing.assert_array_equal(item["teacher_query_feat"],
                                      np.stack([raw["sentences"][c] for c in item["cap_ids"]]))
        for c, q in zip(item["cap_ids"], item["query_feats"]):
            np.testing.assert_allclose(q, student_tokens(raw["tokens"][c], 30))


def test_collate_train_sort_labels_padding(collection):
    root, raw = collection
    ds = build_split(root, "tvr", "i3d_resnet", "train", True, 128, 30).train_dataset()
    items = [ds[i] for i in (0, 1, 2, 3, 5)]  # caption counts 1, 3, 5, 2, 1
    batch = collate_train(items)
    assert batch["video_ids"] == ["vid2", "vid1", "vid3", "vid0", "vid5"]  # stable for the two 1s
    assert batch["query_labels"].tolist() == [0] * 5 + [1] * 3 + [2] * 2 + [3, 4]
    assert batch["query_labels"].dtype == torch.int64
    expected_caps = [c for v in batch["video_ids"] for c in ds.video2caps[v]]
    assert batch["cap_ids"] == expected_caps
    lengths = [min(128, len(raw["frames"][v])) for v in batch["video_ids"]]
    V, L = len(items), max(lengths)
    assert batch["video_feat"].shape == (V, L, DV) and batch["video_feat"].dtype == torch.float32
    assert batch["teacher_video_feat"].shape == (V, L, DT)
    assert batch["video_mask"].dtype == torch.float32
    assert batch["video_mask"].sum(1).tolist() == lengths
    tok = [min(30, len(raw["tokens"][c])) for c in expected_caps]
    assert batch["query_feat"].shape == (len(tok), max(tok), DQ)
    assert batch["query_mask"].sum(1).tolist() == tok
    assert batch["teacher_query_feat"].shape == (len(tok), DT)
    by_vid = {it["video_id"]: it for it in items}
    for k, vid in enumerate(batch["video_ids"]):
        n = lengths[k]
        np.testing.assert_array_equal(batch["video_feat"][k, :n].numpy(), by_vid[vid]["video_feat"])
        assert batch["video_feat"][k, n:].abs().sum() == 0 and batch["teacher_video_feat"][k, n:].abs().sum() == 0
        assert batch["video_mask"][k, n:].sum() == 0
    for q, c in enumerate(expected_caps):
        np.testing.assert_array_equal(batch["query_feat"][q, :tok[q]].numpy(), student_tokens(raw["tokens"][c], 30))
        np.testing.assert_array_equal(batch["teacher_query_feat"][q].numpy(), raw["sentences"][c])
        assert batch["query_feat"][q, tok[q]:].abs().sum() == 0


def test_collate_without_teacher_and_eval(collection):
    root, raw = collection
    split = build_split(root, "tvr", "i3d_resnet", "test", False, 128, 30)
    assert split.teacher_dim is None
    batch = collate_train([split.train_dataset()[i] for i in range(3)])
    assert "teacher_video_feat" not in batch and "teacher_query_feat" not in batch
    vb = collate_videos([split.video_dataset()[i] for i in range(3)])
    assert set(vb) == {"video_feat", "video_mask", "video_ids"} and vb["video_ids"] == ["vid0", "vid1", "vid2"]
    assert vb["video_mask"].sum(1).tolist() == [min(128, len(raw["frames"][f"vid{i}"])) for i in range(3)]
    qds = split.query_dataset()
    assert len(qds) == len(raw["lines"])
    qb = collate_queries([qds[i] for i in range(4)])
    assert set(qb) == {"query_feat", "query_mask", "cap_ids"}
    assert qb["cap_ids"] == split.captions.cap_ids[:4]


# ----------------------------------------------------------------------------
# Start-up checks
# ----------------------------------------------------------------------------

def test_missing_text_key_is_reported(collection):
    root, raw = collection
    path = os.path.join(root, "tvr", "TextData", "roberta_tvr_query_feat.hdf5")
    with h5py.File(path, "a") as f:
        del f["vid1#enc#0"]
        del f["vid4#enc#2"]
    with pytest.raises(DataError) as err:
        build_split(root, "tvr", "i3d_resnet", "train", False, 128, 30)
    msg = str(err.value)
    assert "roberta_tvr_query_feat.hdf5" in msg and f"2 of {len(raw['lines'])} captions" in msg
    assert "first missing: 'vid1#enc#0', 'vid4#enc#2'" in msg
    split = build_split(root, "tvr", "i3d_resnet", "train", False, 128, 30, check=False)
    with pytest.raises(DataError, match="roberta_tvr_query_feat.hdf5"):
        QueryDataset(split.captions, split.text_store)


def test_missing_teacher_video_is_reported(collection):
    root, _ = collection
    path = os.path.join(root, "tvr", "FeatureData", "new_clip_vit_32_tvr_vid_features.hdf5")
    with h5py.File(path, "a") as f:
        del f["vid4"]
    build_split(root, "tvr", "i3d_resnet", "train", False, 128, 30)  # teacher off: not needed
    with pytest.raises(DataError, match=r"new_clip_vit_32_tvr_vid_features\.hdf5: no CLIP frame features "
                                        r"for 1 of 7 videos; first missing: 'vid4'"):
        build_split(root, "tvr", "i3d_resnet", "train", True, 128, 30)


def test_missing_files_are_reported(collection, tmp_path):
    root, _ = collection
    os.remove(os.path.join(root, "tvr", "TextData", "clip_ViT_B_32_tvr_query_feat.hdf5"))
    with pytest.raises(DataError, match=r"missing file .*clip_ViT_B_32_tvr_query_feat\.hdf5: it should contain "
                                        r"CLIP sentence features"):
        build_split(root, "tvr", "i3d_resnet", "train", True, 128, 30)
    with pytest.raises(DataError, match=r"neither the BigFile folder .*FeatureData/i3d\b.*nor the HDF5 file"):
        build_split(root, "tvr", "i3d", "train", False, 128, 30)
    with pytest.raises(DataError, match=r"missing file .*activitynettrain\.caption\.txt"):
        build_split(root, "activitynet", "i3d", "train", False, 128, 30)


def test_empty_split_is_reported(collection):
    root, _ = collection
    path = os.path.join(root, "tvr", "TextData", "tvrval.caption.txt")
    open(path, "w").close()
    with pytest.raises(DataError, match=r"tvrval\.caption\.txt: the split has no captions"):
        build_split(root, "tvr", "i3d_resnet", "val", False, 128, 30)


def test_check_split_accepts_complete_data(collection):
    root, _ = collection
    split = build_split(root, "tvr", "i3d_resnet", "train", True, 128, 30, check=False)
    check_split(split.captions, split.video_store, split.text_store, split.teacher_text_store,
                split.teacher_video_store)


# ----------------------------------------------------------------------------
# DataLoader workers
# ----------------------------------------------------------------------------

def _collect(dataset, collate, num_workers):
    loader = DataLoader(dataset, batch_size=3, shuffle=False, num_workers=num_workers,
                        collate_fn=collate, worker_init_fn=seed_worker)
    return [b for b in loader]


@pytest.mark.parametrize("bigfile", [True, False])
def test_two_workers_read_same_values(tmp_path, bigfile):
    raw = write_collection(str(tmp_path), bigfile=bigfile)
    split = build_split(str(tmp_path), "tvr", "i3d_resnet", "train", True, 128, 30)
    ds = split.train_dataset()
    ds[0]  # opens the HDF5 handles in this process before the workers fork
    serial, parallel = _collect(ds, collate_train, 0), _collect(ds, collate_train, 2)
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert a["video_ids"] == b["video_ids"] and a["cap_ids"] == b["cap_ids"]
        for key in ("video_feat", "video_mask", "query_feat", "teacher_video_feat", "teacher_query_feat"):
            assert torch.equal(a[key], b[key]), key
    k = serial[0]["video_ids"].index("vid0")
    np.testing.assert_allclose(serial[0]["video_feat"][k, :128].numpy(), student_frames(raw["frames"]["vid0"], 128))


def test_seed_worker_seeds_numpy_and_random():
    torch.manual_seed(123)
    seed_worker(0)
    a = (np.random.rand(), random.random())
    torch.manual_seed(123)
    seed_worker(1)
    assert (np.random.rand(), random.random()) == a


def test_stores_reopen_in_a_new_process_and_pickle_without_handles(collection, monkeypatch):
    import pickle
    root, raw = collection
    split = build_split(root, "tvr", "i3d_resnet", "train", True, 128, 30)
    store = split.teacher_video_store
    store.get("vid0")
    parent_handle = store._file
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as seen from a forked worker
    np.testing.assert_array_equal(store.get("vid0"), raw["teacher"]["vid0"])
    assert store._file is not parent_handle
    clone = pickle.loads(pickle.dumps(store))
    assert clone._file is None
    np.testing.assert_array_equal(clone.get("vid1"), raw["teacher"]["vid1"])
    bf = split.video_store
    bf.read_video("vid0")
    bf_clone = pickle.loads(pickle.dumps(bf))
    assert bf_clone._memmap is None
    np.testing.assert_array_equal(bf_clone.read_video("vid2"), raw["frames"]["vid2"])
