"""The preloaded split (--preload): batches bit-identical to the loaders', the same training run, storage dtypes."""
import numpy as np
import pytest
import torch
from synthetic import DQ, DT, DV, write_collection
from torch.utils.data import DataLoader

from method import train
from method.data import GlobalBatchSampler, build_split, collate_queries, collate_train, collate_videos
from method.data.feed import EvalBlocks, TrainFeed, as_float32
from method.data.preload import STORAGE_DTYPES, pack_queries, pack_train, pack_videos, packed_bytes
from method.data.sampler import block_range, share

CPU = torch.device("cpu")
K = 4  # clips per video


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_collection(str(folder), n_videos=11)
    return str(folder)


def split_of(root, name="train", teacher=True, pool_to_teacher=False):
    return build_split(root, "tvr", "i3d_resnet", name, teacher, 128, 30, pool_to_teacher=pool_to_teacher)


def assert_same_batch(got: dict, ref: dict):
    """Every key, every tensor bit for bit (dtype and shape included), every id list."""
    assert list(got) == list(ref)
    for key, value in ref.items():
        if torch.is_tensor(value):
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def index_sets(n, seed=0):
    """Shares of global batches of several processes: varied sizes, order and empty shares."""
    g = np.random.default_rng(seed)
    batches = [list(g.permutation(n)[:size]) for size in (n, 5, 3, 2, 1)]
    return [share(b, rank, world) for b in batches for world in (1, 2, 3) for rank in range(world)]


@pytest.mark.parametrize("sort_by", ["captions", "frames"])
@pytest.mark.parametrize("variant", ["teacher+clips", "plain", "pool_to_teacher"])
def test_train_batches_equal_collate_train(root, sort_by, variant):
    split = split_of(root, teacher=variant != "plain", pool_to_teacher=variant == "pool_to_teacher")
    n_clips = K if variant == "teacher+clips" else None
    dataset = split.train_dataset(n_clips, teacher_clips=variant == "teacher+clips")
    dims = (split.visual_dim, split.text_dim, split.teacher_dim, n_clips, variant == "teacher+clips")
    packed = pack_train(dataset, torch.float32, CPU)
    assert packed.nbytes > 0
    items = [dataset[i] for i in range(len(dataset))]
    for idx in index_sets(len(dataset)):
        ref = collate_train([items[i] for i in idx], dims=dims, sort_by=sort_by)
        got, counts = packed.batch(idx, sort_by)
        assert_same_batch(got, ref)
        assert counts == torch.bincount(ref["query_labels"], minlength=len(ref["video_ids"])).tolist()
    if variant == "teacher+clips":
        assert {"clip_feat", "teacher_clip_feat", "teacher_video_feat", "teacher_query_feat"} <= set(ref)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_storage_holds_the_rounded_float32_values(root, dtype):
    split = split_of(root)
    dataset = split.train_dataset(K, teacher_clips=True)
    full, half = pack_train(dataset, torch.float32, CPU), pack_train(dataset, STORAGE_DTYPES[dtype], CPU)
    assert half.nbytes * 2 == full.nbytes
    idx = list(range(len(dataset)))
    ref, _ = full.batch(idx)
    got, _ = half.batch(idx)
    assert got["video_feat"].dtype == STORAGE_DTYPES[dtype]
    rounded = {k: v.to(STORAGE_DTYPES[dtype]).float() if torch.is_tensor(v) and v.is_floating_point() else v
               for k, v in ref.items()}
    assert_same_batch(as_float32(got), rounded)


def test_eval_blocks_equal_collate_videos_and_queries(root):
    split = split_of(root, "test", teacher=False)
    videos, queries = split.video_dataset(K), split.query_dataset()
    for world in (1, 3):
        for rank in range(world):
            v_range, q_range = block_range(len(videos), 2, rank, world), block_range(len(queries), 3, rank, world)
            pv = pack_videos(videos, torch.float32, CPU, v_range)
            pq = pack_queries(queries, torch.float32, CPU, q_range)
            for start in range(0, len(v_range), 2):
                block = v_range[start:start + 2]
                assert_same_batch(pv.batch(np.arange(start, start + len(block))),
                                  collate_videos([videos[i] for i in block]))
            for start in range(0, len(q_range), 3):
                block = q_range[start:start + 3]
                assert_same_batch(pq.batch(np.arange(start, start + len(block))),
                                  collate_queries([queries[i] for i in block]))


def test_block_ranges_are_whole_blocks_that_cover_the_split():
    for n, block, world in [(7, 2, 3), (19, 3, 3), (5, 100, 2), (11, 3, 4), (3, 1, 5)]:
        parts = [block_range(n, block, rank, world) for rank in range(world)]
        assert [i for p in parts for i in p] == list(range(n))
        assert all(p.start % block == 0 for p in parts if len(p))


def test_eval_blocks_draw_like_a_dataloader(root):
    """Each iteration draws one number from the default generator, from files or packed (later draws unchanged)."""
    split = split_of(root, "test", teacher=False)
    videos = split.video_dataset()
    loader = EvalBlocks(CPU, 4, loader=DataLoader(videos, batch_size=4, collate_fn=collate_videos))
    packed = EvalBlocks(CPU, 4, packed=pack_videos(videos, torch.float32, CPU))
    states = []
    for blocks in (loader, packed):
        torch.manual_seed(5)
        for _ in range(2):
            out = list(blocks)
        states.append(torch.get_rng_state())
        assert len(out) == len(blocks) == 3
    assert torch.equal(states[0], states[1])
    for a, b in zip(loader, packed):
        assert_same_batch(b, a)


@pytest.mark.parametrize("world", [1, 3])
def test_train_feed_from_files_and_packed(root, world):
    split = split_of(root)
    dataset = split.train_dataset()
    dims = (split.visual_dim, split.text_dim, split.teacher_dim, None, False)
    packed = pack_train(dataset, torch.float32, CPU)
    for rank in range(world):
        def sampler():
            return GlobalBatchSampler(dataset.caption_counts, 4, seed=3, rank=rank, world=world)

        files = sampler()
        loader = DataLoader(dataset, batch_sampler=files, collate_fn=lambda items: collate_train(items, dims=dims))
        feeds = TrainFeed(files, CPU, loader=loader), TrainFeed(sampler(), CPU, packed=packed)
        for feed in feeds:
            feed.set_epoch(2)
        for (a, ca), (b, cb) in zip(*feeds, strict=True):
            assert_same_batch(b, a)
            assert ca == cb


def test_packed_bytes_from_shapes():
    sizes = packed_bytes(10, 3.0, 20, 2.0, (DV, DQ, DT), torch.float16, n_clips=K, teacher_clips=True)
    assert sizes["frames"] == 10 * 3 * DV * 2 and sizes["tokens"] == 20 * 2 * DQ * 2
    assert sizes["total"] == sum(v for k, v in sizes.items() if k != "total")


ARGS = ["--collection", "tvr", "--device", "cpu", "--num_workers", "0", "--hidden_size", "16", "--n_heads", "2",
        "--bsz", "3", "--margin", "0.1", "--kd_schedule", "exp_decay", "--seed", "7", "--eval_query_bsz", "4",
        "--eval_video_bsz", "3", "--n_epoch", "2"]


def test_training_run_gives_identical_weights_preloaded_or_not(root, tmp_path):
    """Two epochs (the second draws its negatives after an evaluation) from the files, RAM and 'device' (CPU)."""
    weights, metrics = [], []
    for mode in ("none", "ram", "device"):
        run_dir = tmp_path / mode
        result = train.main(["--root_path", root, "--results_dir", str(run_dir), *ARGS, "--preload", mode])
        weights.append(torch.load(run_dir / "latest.ckpt", weights_only=True)["model"])
        metrics.append(result["t2v"])
    for other, m in zip(weights[1:], metrics[1:]):
        for key, value in weights[0].items():
            assert torch.equal(other[key], value), key
        assert m == metrics[0]


def test_plain_preload_is_ram_and_16_bit_storage_needs_preload(root, tmp_path, capsys):
    from method.config.flags import parse_train_args
    opt = parse_train_args(["--root_path", root, "--collection", "tvr", "--preload"])
    assert (opt.preload, opt.preload_dtype) == ("ram", "float32")
    with pytest.raises(SystemExit):  # refused when the flags are parsed
        parse_train_args(["--root_path", root, "--collection", "tvr", "--preload_dtype", "bfloat16"])
    assert "--preload_dtype bfloat16 needs --preload ram or --preload device" in capsys.readouterr().err
    result = train.main(["--root_path", root, "--results_dir", str(tmp_path / "half"), *ARGS, "--n_epoch", "1",
                         "--preload", "device", "--preload_dtype", "float16"])
    assert result["t2v"]["fused"]["sumr"] > 0


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.py on a GPU)")


@CUDA
def test_device_split_gives_the_cpu_batches(root):
    split = split_of(root)
    dataset = split.train_dataset(K, teacher_clips=True)
    cpu, gpu = pack_train(dataset, torch.float32, CPU), pack_train(dataset, torch.float32, torch.device("cuda"))
    for idx in index_sets(len(dataset)):
        ref, counts = cpu.batch(idx)
        got, got_counts = gpu.batch(idx)
        assert got["video_feat"].is_cuda and counts == got_counts
        assert_same_batch({k: v.cpu() if torch.is_tensor(v) else v for k, v in got.items()}, ref)


@CUDA
def test_ram_split_for_a_gpu_run_gathers_into_pinned_memory_and_prefetches(root):
    split = split_of(root)
    dataset = split.train_dataset()
    packed = pack_train(dataset, torch.float16, CPU, pin=True)
    sampler = GlobalBatchSampler(dataset.caption_counts, 4, seed=3)
    host = [packed.batch(share, "captions") for share in sampler]
    assert host[0][0]["video_feat"].is_pinned()
    fed = list(TrainFeed(sampler, torch.device("cuda"), packed=packed))
    assert len(fed) == len(host)
    for (batch, counts), (ref, ref_counts) in zip(fed, host):
        assert counts == ref_counts and batch["video_feat"].dtype == torch.float32 and batch["video_feat"].is_cuda
        assert_same_batch({k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()}, as_float32(ref))


def test_a_16_bit_run_resumes_only_preloaded(root, tmp_path):
    """--preload_dtype is the run's (opt.json, restored on --resume); --preload is the machine's."""
    from method.config.flags import parse_train_args, save_opt
    tmp_path.mkdir(exist_ok=True)
    save_opt(parse_train_args(["--root_path", root, "--collection", "tvr", "--preload", "ram",
                               "--preload_dtype", "float16"]), tmp_path)
    with pytest.raises(SystemExit, match="--preload_dtype float16 needs --preload ram or --preload device"):
        parse_train_args(["--resume", str(tmp_path)])
    opt = parse_train_args(["--resume", str(tmp_path), "--preload", "device"])
    assert (opt.preload, opt.preload_dtype) == ("device", "float16")
