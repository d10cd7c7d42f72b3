"""The GMMFormer family's data side and evaluator against the authors' code (gmmformer_golden.npz).

Pooling (32 clips, 128 frames), the training items, the collated batch sorted
by frame count, the evaluation batches of videos and captions, and R@K / SumR
of the authors' evaluator on tie-free scores. The tiny on-disk root is built
from the golden's stored arrays (a BigFile of 16-d frames, 12-d tokens in HDF5).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import write_bigfile, write_h5

from method.data import build_split, clip_features, collate_queries, collate_train, collate_videos
from method.data.transforms import l2_normalize, reduce_frames
from method.evaluation.metrics import t2v_metrics

POOL_SIZES = (1, 3, 5, 31, 32, 33, 47, 100, 129, 200, 300)
EVAL_VIDEOS = ("w0", "w1")


def close(actual, golden, rtol=1e-5):
    """|actual - golden| <= rtol * max(1, |golden|), the tolerance of test_gmmformer.py."""
    actual, golden = np.asarray(actual, dtype=np.float64), np.asarray(golden, dtype=np.float64)
    assert actual.shape == golden.shape
    assert np.all(np.abs(actual - golden) <= rtol * np.maximum(1.0, np.abs(golden)))


@pytest.mark.parametrize("n", POOL_SIZES)
def test_clip_and_frame_pooling_match_the_authors(gmmformer_golden, n):
    """average_to_fixed_length to 32 (with and without the L2 step) and the 128-frame sampling + L2,
    including n < 32 and the exact-half boundaries of n = 5, 33 and 100."""
    g = gmmformer_golden
    x = g[f"pool_in_{n}"]
    close(clip_features(x, 32, normalize=False), g[f"clip32_raw_{n}"])
    close(clip_features(x, 32), g[f"clip32_{n}"])
    close(l2_normalize(reduce_frames(x, 128)), g[f"frame128_{n}"], rtol=1e-12)


def captions(g) -> tuple[dict, dict]:
    """({cap_id: stored tokens} of the train videos, the same of the val videos), caption-file order."""
    vids = [str(v) for v in g["data_video_ids"]]
    train = {f"{v}#enc#{k}": g[f"data_{v}_text_raw_{k}"]
             for v, n in zip(vids, g["data_caption_counts"].tolist()) for k in range(n)}
    val = {str(c): g[f"data_eval_text_raw_{i}"] for i, c in enumerate(g["data_eval_text_cap_ids_in_file_order"])}
    return train, val


def golden_root(g, root: Path) -> None:
    """The authors' tiny root: train videos v0..v3 and val videos w0, w1 in one BigFile, tokens in HDF5."""
    vids = [str(v) for v in g["data_video_ids"]] + list(EVAL_VIDEOS)
    frames = {v: g[f"data_{v}_raw"] for v in vids}
    base = root / "tvr"
    (base / "TextData").mkdir(parents=True)
    write_bigfile(base / "FeatureData" / "i3d_resnet", {v: len(x) for v, x in frames.items()},
                  np.random.default_rng(0), values=np.concatenate([frames[v] for v in vids]))
    train, val = captions(g)
    write_h5(base / "TextData" / "roberta_tvr_query_feat.hdf5", {**train, **val})
    for split, caps in (("train", train), ("val", val), ("test", val)):
        (base / "TextData" / f"tvr{split}.caption.txt").write_text("".join(f"{c} a caption\n" for c in caps))


def test_training_items_and_batch_match_the_authors(gmmformer_golden, tmp_path):
    g = gmmformer_golden
    golden_root(g, tmp_path)
    split = build_split(str(tmp_path), "tvr", "i3d_resnet", "train", use_teacher=False, max_ctx_l=128,
                        max_desc_l=30)
    dataset = split.train_dataset(n_clips=32)
    assert list(dataset.frame_counts) == [min(n, 128) for n in g["data_frame_counts"].tolist()]
    items = [dataset[i] for i in range(len(dataset))]
    for item in items:
        vid = item["video_id"]
        close(item["clip_feat"], g[f"data_{vid}_item_clip"][0])
        close(item["video_feat"], g[f"data_{vid}_item_frames"])
        for k, tokens in enumerate(item["query_feats"]):
            close(tokens, g[f"data_{vid}_item_text_{k}"])
    batch = collate_train(items, sort_by="frames")
    order = [str(v) for v in g["data_batch_video_order"]]  # v1, v3, v0, v2: by frame count, not caption count
    assert batch["video_ids"] == order
    assert collate_train(items)["video_ids"] != order
    assert batch["query_labels"].tolist() == g["data_batch_text_labels"].tolist()
    close(batch["clip_feat"], g["data_batch_clip"])
    close(batch["video_feat"], g["data_batch_frames"])
    np.testing.assert_array_equal(batch["video_mask"].numpy(), g["data_batch_videos_mask"])
    n = batch["query_mask"].shape[1]  # padded to the batch's longest caption (30 here, as the authors')
    close(batch["query_feat"], g["data_batch_text"][:, :n])
    np.testing.assert_array_equal(batch["query_mask"].numpy(), g["data_batch_text_mask"][:, :n])


def test_evaluation_batches_match_the_authors(gmmformer_golden, tmp_path):
    """Videos in file order (no sort); captions are compared by id, as the authors' loader re-sorts them by
    token count (the order of a query block does not change any rank)."""
    g = gmmformer_golden
    golden_root(g, tmp_path)
    split = build_split(str(tmp_path), "tvr", "i3d_resnet", "val", use_teacher=False, max_ctx_l=128, max_desc_l=30)
    videos = collate_videos([split.video_dataset(n_clips=32)[i] for i in range(2)])
    assert videos["video_ids"] == list(EVAL_VIDEOS)
    close(videos["clip_feat"], g["data_eval_video_clip"])
    close(videos["video_feat"], g["data_eval_video_frames"])
    np.testing.assert_array_equal(videos["video_mask"].numpy(), g["data_eval_video_mask"])
    queries = split.query_dataset()
    batch = collate_queries([queries[i] for i in range(len(queries))])
    assert batch["cap_ids"] == [str(c) for c in g["data_eval_text_cap_ids_in_file_order"]]
    golden_row = {str(c): i for i, c in enumerate(g["data_eval_text_cap_ids_in_batch"])}
    rows = [golden_row[c] for c in batch["cap_ids"]]
    n = batch["query_mask"].shape[1]
    close(batch["query_feat"], g["data_eval_text_feat"][rows][:, :n])
    np.testing.assert_array_equal(batch["query_mask"].numpy(), g["data_eval_text_mask"][rows][:, :n])


def test_recalls_and_sumr_match_the_authors_evaluator(gmmformer_golden):
    g = gmmformer_golden
    videos = [str(v) for v in g["metric_video_ids"]]
    labels = torch.tensor([videos.index(str(c).split("#")[0]) for c in g["metric_cap_ids"]])
    metrics = t2v_metrics(torch.from_numpy(g["metric_scores"]), labels)
    got = [metrics[k] for k in ("r1", "r5", "r10", "r100", "sumr")]
    np.testing.assert_allclose(got, g["metric_r1_r5_r10_r100_sumr"], rtol=0, atol=1e-9)
