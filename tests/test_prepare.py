"""``python -m method.prepare`` (and ``method.extraction.convert``) on generated videos with tiny local models.

Nothing is downloaded: VideoMAE, ResNet, RoBERTa, CLIP and SigLIP are tiny random
models saved to a temporary folder and loaded with ``from_pretrained``. The raw
data: eight short mpeg4 / h264 videos and one PNG frame folder of moving
patterns, one corrupt "video", and one caption file split by ratio.
"""
import json
import os
import shutil
import subprocess
import traceback

import h5py
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("av")

from synthetic import read_tree, write_bigfile  # noqa: E402
from tiny_models import (  # noqa: E402
    IMAGE_DIM,
    SIGLIP_DIM,
    TEXT_DIM,
    VIDEO_DIM,
    make_tiny_models,
    write_pattern_frames,
    write_pattern_video,
)

from method.data.bigfile import BigFile  # noqa: E402
from method.extraction import (  # noqa: E402
    convert,
    encoders,
    prefetch,
    prepare,  # noqa: E402  (after the optional-dependency skips)
    writers,
)
from method.extraction.captions import parse_split_rule, read_single_file, split_captions  # noqa: E402
from method.extraction.clips import Part  # noqa: E402
from method.extraction.decode import DecodeError, FrameSource  # noqa: E402
from method.extraction.sampling import clip_grid, grid_indices  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTION = "toy"
FEATURE = "tiny_videomae_tiny_resnet"  # the auto name of the tiny student models
TEACHER_DIM = 24                       # the tiny CLIP's projection
SECONDS = {f"v{i}": 2 + (i % 3) * 0.7 for i in range(8)}  # 2.0, 2.7, 3.4 s at 10 fps
FRAME_FOLDER_FRAMES = 8                # f0: 8 PNG frames at 3 fps = 2.67 s


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_tiny_models(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Folders 'videos' (v0-v7, bad.mp4) and 'frames' (f0/), and the caption file 'captions'."""
    base = tmp_path_factory.mktemp("raw")
    videos, frames = base / "videos", base / "frames"
    videos.mkdir()
    lines = []
    for i, (vid, seconds) in enumerate(SECONDS.items()):
        write_pattern_video(videos / f"{vid}.mp4", seconds, codec="libx264" if i % 2 else "mpeg4", seed=i)
        lines += [f"{vid} a person opens the door", f"{vid}#enc#1 the dog runs in the room {i}"]
    write_pattern_frames(str(frames / "f0"), FRAME_FOLDER_FRAMES, seed=9)
    lines += ["f0 a man sits down", "f0 then the woman walks in"]
    (videos / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    lines.append("bad the red box")
    (base / "captions.txt").write_text("\n".join(lines) + "\n")
    return {"videos": str(videos), "frames": str(frames), "captions": str(base / "captions.txt")}


def model_flags(models, teacher="teacher"):
    return ["--video_model", models["video"], "--image_model", models["image"], "--text_model", models["text"],
            "--teacher_model", models[teacher], "--device", "cpu", "--num_workers", "2", "--clips_per_batch", "2"]


def run_prepare(root, raw, models, *flags, captions=True):
    source = ["--captions", raw["captions"], "--split_rule", "ratio:0.5,0.25,0.25"] if captions else []
    return prepare.main([root, COLLECTION, "--videos", raw["videos"], raw["frames"], *source,
                         *model_flags(models), *flags])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, raw, models):
    """The collection made by one run of the command; returns its root."""
    root = str(tmp_path_factory.mktemp("prepared"))
    assert run_prepare(root, raw, models) == 0
    return root


def path(root, *parts):
    return os.path.join(root, COLLECTION, *parts)


def read_h5(file):
    with h5py.File(file, "r") as f:
        return {k: f[k][()] for k in f.keys()}


def caption_ids(root, split):
    with open(path(root, "TextData", f"{COLLECTION}{split}.caption.txt")) as f:
        return [line.split()[0] for line in f if line.strip()]


# --------------------------------------------------------------------------- #
# pieces
# --------------------------------------------------------------------------- #
def test_clip_grid_covers_the_video_and_samples_sub_window_centres():
    starts, stops = clip_grid(3.4, 1.5)
    np.testing.assert_allclose(starts, [0, 1.5, 3.0])
    np.testing.assert_allclose(stops, [1.5, 3.0, 3.4])
    assert len(clip_grid(3.0, 1.5)[0]) == 2 and len(clip_grid(0.4, 1.5)[0]) == 1
    times = np.arange(34) / 10
    np.testing.assert_array_equal(grid_indices(times, starts, stops, 1)[:2, 0], [7, 22])
    # 4 frames per 1.5 s clip: at 0.1875, 0.5625, 0.9375, 1.3125 s
    np.testing.assert_array_equal(grid_indices(times, starts, stops, 4)[0], [1, 5, 9, 13])


def test_split_rules_and_caption_ids(tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("a one\na two\nb#enc#3 three\nc four\nd five\ne six\nf seven\ng eight\nh nine\ni ten\nj x\n")
    captions = read_single_file(str(caps))
    assert [c for c, _ in captions[:3]] == ["a#0", "a#1", "b#enc#3"]
    splits = split_captions(captions, parse_split_rule("ratio:0.7,0.1,0.2"), seed=0)
    videos = {s: {c.split("#")[0] for c, _ in caps} for s, caps in splits.items()}
    assert [len(videos[s]) for s in ("train", "val", "test")] == [7, 1, 2]
    assert splits == split_captions(captions, parse_split_rule("ratio:0.7,0.1,0.2"), seed=0)  # deterministic
    assert splits != split_captions(captions, parse_split_rule("ratio:0.7,0.1,0.2"), seed=1)
    rule = tmp_path / "split.txt"
    rule.write_text("".join(f"{v} {'test' if v in 'ab' else 'train'}\n" for v in "abcdefghij"))
    by_file = split_captions(captions, parse_split_rule(f"file:{rule}"), seed=0)
    assert [c for c, _ in by_file["test"]] == ["a#0", "a#1", "b#enc#3"] and not by_file["val"]
    rule.write_text("a train\n")
    with pytest.raises(SystemExit, match="9 videos of the captions have no split"):
        split_captions(captions, parse_split_rule(f"file:{rule}"), seed=0)
    with pytest.raises(SystemExit, match="--split_rule"):
        parse_split_rule("half")


def test_prefetch_keeps_order_reraises_producer_errors_and_abandons_streams():
    produced = []

    def produce(item):
        if item == "bad":
            raise ValueError("broken")
        for k in range(50):
            produced.append((item, k))
            yield item, k

    seen, failures = [], []
    for item, stream in prefetch.prefetch_streams(produce, ["a", "bad", "c", "d"], workers=2):
        try:
            values = list(stream) if item != "c" else [next(stream)]  # "c" is abandoned after one value
        except ValueError as err:  # the producer's own exception, raised in this thread
            failures.append((item, str(err), any(f.name == "produce" for f in traceback.extract_tb(err.__traceback__))))
            continue
        seen.append((item, len(values)))
    assert seen == [("a", 50), ("c", 1), ("d", 50)]
    assert failures == [("bad", "broken", True)]  # with the worker's traceback
    assert sum(1 for item, _ in produced if item == "c") < 50  # its producer stopped


def test_prefetch_passes_on_a_system_exit_of_a_producer():
    def produce(item):
        raise SystemExit("no av")
        yield item

    with pytest.raises(SystemExit, match="no av"):
        for _, stream in prefetch.prefetch_streams(produce, ["a"], workers=1):
            list(stream)


def test_unreadable_sources_are_decode_errors(tmp_path):
    """Only reading a video or its frames makes a DecodeError (a failed video); the reason names the cause."""
    def read(kind, where):
        source = FrameSource(kind, str(where), 3.0)
        with pytest.raises(DecodeError) as info:
            times, _ = source.timeline()
            list(source.frames(range(len(times))))
        return str(info.value)

    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert read("videos", tmp_path / "noise.mp4").startswith("InvalidDataError")
    assert read("videos", tmp_path / "empty.mp4").startswith("InvalidDataError")
    assert read("videos", tmp_path / "gone.mp4").startswith("FileNotFoundError")
    frames = tmp_path / "frames"
    write_pattern_frames(str(frames), 3, seed=0)
    (frames / "00002.png").write_bytes(b"not a png")  # the second frame is unreadable
    assert read("frames", frames).startswith("UnidentifiedImageError")
    (tmp_path / "no_images").mkdir()
    assert read("frames", tmp_path / "no_images") == "no image files in the frame folder"
    assert read("frames", tmp_path / "no_folder").startswith("FileNotFoundError")


def test_part_averages_windows_of_the_video_model():
    class Echo:
        def encode(self, x):  # (n, T, C, H, W) -> (n, 1): the mean pixel of each input
            return x.reshape(len(x), -1).mean(1, keepdim=True).numpy()

    pixels = torch.arange(2 * 8, dtype=torch.float32).reshape(2, 8, 1, 1, 1)  # 2 clips x 8 frames
    out = Part(Echo(), per_clip=8, group=4).encode(pixels)
    np.testing.assert_allclose(out[:, 0], [(1.5 + 5.5) / 2, (9.5 + 13.5) / 2])


def test_help_names_every_flag_and_each_default_once(capsys):
    for module, argv in ((prepare, ["--help"]), (convert, ["--help"])):
        with pytest.raises(SystemExit):
            module.main(argv)
        text = capsys.readouterr().out
        assert "(default: None)" not in text and "(default: False)" not in text
        for action in module.build_parser()._actions:
            assert action.help, action.dest
            assert (action.help or "").lower().count("default") <= 1
    assert "(default: 1.5)" in prepare.build_parser().format_help()


def test_flags_are_checked(models, raw, tmp_path):
    with pytest.raises(SystemExit):
        run_prepare(str(tmp_path), raw, models, "--video_frames_per_clip", "6")  # not a multiple of 4
    with pytest.raises(SystemExit):
        run_prepare(str(tmp_path), raw, models, "--video_model", "none", "--image_model", "none")


# --------------------------------------------------------------------------- #
# the command
# --------------------------------------------------------------------------- #
def test_prepare_writes_the_released_layout(prepared, raw):
    root = prepared
    store = BigFile(path(root, "FeatureData", FEATURE))
    kept = [*SECONDS, "f0"]
    assert store.keys() == set(kept) and store.dim == VIDEO_DIM + IMAGE_DIM
    n_clips = {vid: int(np.ceil(s / 1.5)) for vid, s in SECONDS.items()} | {"f0": 2}
    assert {vid: store.n_frames(vid) for vid in kept} == n_clips
    teacher = read_h5(path(root, "FeatureData", f"new_clip_vit_32_{COLLECTION}_vid_features.hdf5"))
    assert {vid: a.shape for vid, a in teacher.items()} == {vid: (n, TEACHER_DIM) for vid, n in n_clips.items()}
    # the corrupt video: listed, skipped, its caption left out of the caption files
    with open(path(root, "prepare_failed_videos.txt")) as f:
        assert f.read().startswith("bad\tInvalidDataError")
    splits = {s: caption_ids(root, s) for s in ("train", "val", "test")}
    all_caps = [c for caps in splits.values() for c in caps]
    assert len(all_caps) == 2 * len(kept) and "bad#0" not in all_caps and all(splits.values())
    tokens = read_h5(path(root, "TextData", f"roberta_{COLLECTION}_query_feat.hdf5"))
    sentences = read_h5(path(root, "TextData", f"clip_ViT_B_32_{COLLECTION}_query_feat.hdf5"))
    assert set(all_caps) <= set(tokens) and set(all_caps) <= set(sentences)
    assert all(v.ndim == 2 and v.shape[1] == TEXT_DIM and v.dtype == np.float32 for v in tokens.values())
    assert all(v.shape == (TEACHER_DIM,) for v in sentences.values())
    assert not [n for n in os.listdir(path(root, "FeatureData")) if n.endswith((".partial", ".old"))]


def test_student_rows_are_video_then_image_features(prepared, raw, models):
    """v2 (3.4 s: 3 clips, encoded in chunks of 2) equals its features computed directly."""
    source = FrameSource("videos", os.path.join(raw["videos"], "v2.mp4"), 3.0)
    times, duration = source.timeline()
    assert len(times) == 34 and duration == pytest.approx(3.4)
    starts, stops = clip_grid(duration, 1.5)
    video_idx, image_idx = grid_indices(times, starts, stops, 4), grid_indices(times, starts, stops, 1)
    frames = dict(source.frames(np.unique(np.concatenate([video_idx.ravel(), image_idx.ravel()]))))
    cpu = torch.device("cpu")
    video_enc = encoders.VideoEncoder(models["video"], cpu, 8)
    image_enc = encoders.ImageEncoder(models["image"], cpu, 8)
    video = video_enc.encode(torch.stack([video_enc.transform([frames[i] for i in row]) for row in video_idx]))
    image = image_enc.encode(image_enc.transform([frames[i] for i in image_idx[:, 0]]))
    stored = BigFile(path(prepared, "FeatureData", FEATURE)).read_video("v2")
    np.testing.assert_allclose(stored, np.concatenate([video, image], axis=1), rtol=1e-5, atol=1e-6)


def test_token_features_are_the_last_layer_of_every_token(prepared, models):
    tokenizer = encoders.import_optional("transformers").AutoTokenizer.from_pretrained(models["text"])
    model = encoders.import_optional("transformers").AutoModel.from_pretrained(models["text"])
    ids = tokenizer("a person opens the door", return_tensors="pt")
    assert tokenizer.convert_ids_to_tokens(ids["input_ids"][0])[::len(ids["input_ids"][0]) - 1] == ["<s>", "</s>"]
    with torch.no_grad():
        expected = model(**ids).last_hidden_state[0].numpy()
    stored = read_h5(path(prepared, "TextData", f"roberta_{COLLECTION}_query_feat.hdf5"))["v0#0"]
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)


def test_second_run_skips_everything(prepared, raw, models, monkeypatch, capsys):
    before = read_tree(prepared)

    def no_model(*args, **kwargs):
        raise AssertionError("a run with nothing left to encode must load no model")
    monkeypatch.setattr(encoders, "_load_model", no_model)
    capsys.readouterr()
    assert run_prepare(prepared, raw, models) == 0
    out = capsys.readouterr().out
    assert "student tokens" in out and "0 encoded, 19 already present" in out
    assert "videos: 1 of 10 had parts to encode, 0 encoded, 1 failed; student frames unchanged" in out
    assert read_tree(prepared) == before


def test_trains_one_epoch_and_evaluates(prepared, tmp_path):
    from method import eval as evaluate
    from method import train

    run_dir = tmp_path / "run"
    train.main(["--root_path", prepared, "--collection", COLLECTION, "--visual_feature", FEATURE,
                "--results_dir", str(run_dir), "--n_epoch", "1", "--bsz", "2", "--hidden_size", "16",
                "--n_heads", "2", "--device", "cpu", "--num_workers", "0", "--kd_schedule", "exp_decay"])
    # what ./do_test.sh COLLECTION FEATURE ROOT RUN_DIR runs
    result = evaluate.main(["--collection", COLLECTION, "--visual_feature", FEATURE, "--root_path", prepared,
                            "--model_dir", str(run_dir), "--device", "cpu", "--num_workers", "0"])
    assert result["n_queries"] == len(caption_ids(prepared, "test")) and np.isfinite(result["t2v"]["fused"]["sumr"])
    assert json.loads((run_dir / "eval_test.json").read_text())["t2v"] == result["t2v"]


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: method.prepare prints its last line, method.train its arguments one a line.
if [ "$2" = method.prepare ]; then echo "prepare $*"; echo "train with: $TRAIN_LINE"; exit 0; fi
shift 2; printf '%s\\n' "$@"
"""


def test_do_custom_runs_prepare_then_the_printed_training_command(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    root = str(tmp_path / "my data")  # a path with a space survives the quoting
    opt = prepare.parse_args([root, "mine", "--videos", "v", "--video_model", "none", "--visual_feature", "feat",
                              "--teacher_model", "none"])
    line = prepare.train_command(opt, "", "")
    env = {**os.environ, "PYTHON": str(fake), "TRAIN_LINE": line, "TRAIN_FLAGS": "--n_epoch 3 --bsz 8"}
    proc = subprocess.run([os.path.join(REPO, "do_custom.sh"), root, "mine", "/videos", "--captions", "c.txt"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"prepare -m method.prepare {root} mine --videos /videos --captions c.txt"
    assert lines[2:] == ["--root_path", root, "--collection", "mine", "--visual_feature", "feat",
                         "--no_teacher", "--n_epoch", "3", "--bsz", "8"]
    env["TRAIN"] = "0"
    proc = subprocess.run([os.path.join(REPO, "do_custom.sh"), root, "mine", "/videos"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2


def test_interrupted_run_resumes_to_the_same_files(prepared, raw, models, tmp_path, monkeypatch, capsys):
    """Released-format caption files as input; a run killed after 3 videos leaves nothing training would read."""
    root = str(tmp_path)
    os.makedirs(path(root, "TextData"))
    for split in ("train", "val", "test"):
        shutil.copy(path(prepared, "TextData", f"{COLLECTION}{split}.caption.txt"), path(root, "TextData"))
    with open(path(root, "TextData", f"{COLLECTION}test.caption.txt"), "a") as f:
        f.write("bad#0 the red box\n")
    real_add, staged = writers.BigFileWriter.add, []

    def add_then_stop(self, video_id, frames):
        if len(staged) == 3:
            raise KeyboardInterrupt
        staged.append(video_id)
        real_add(self, video_id, frames)
    monkeypatch.setattr(writers.BigFileWriter, "add", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(root, raw, models, captions=False)
    feature_dir = path(root, "FeatureData")
    teacher_file = os.path.join(feature_dir, f"new_clip_vit_32_{COLLECTION}_vid_features.hdf5")
    assert not os.path.exists(os.path.join(feature_dir, FEATURE)) and not os.path.exists(teacher_file)
    assert len(os.listdir(os.path.join(feature_dir, FEATURE + ".partial", "staging"))) == 3
    assert os.path.isfile(teacher_file + ".partial")

    monkeypatch.setattr(writers.BigFileWriter, "add", real_add)
    encoded = []
    real_encode = encoders.VideoEncoder.encode
    monkeypatch.setattr(encoders.VideoEncoder, "encode", lambda self, x: encoded.append(len(x)) or real_encode(self, x))
    capsys.readouterr()
    assert run_prepare(root, raw, models, captions=False) == 0
    assert "videos: 7 of 10 had parts to encode, 6 encoded, 1 failed" in capsys.readouterr().out
    assert sum(encoded) == sum(BigFile(os.path.join(feature_dir, FEATURE)).n_frames(v) for v in
                               BigFile(os.path.join(feature_dir, FEATURE)).keys() - set(staged))
    for name in ("feature.bin", "id.txt", "video2frames.txt", "shape.txt"):
        with open(os.path.join(feature_dir, FEATURE, name), "rb") as a, \
                open(path(prepared, "FeatureData", FEATURE, name), "rb") as b:
            assert a.read() == b.read(), name
    expected = read_h5(path(prepared, "FeatureData", os.path.basename(teacher_file)))
    got = read_h5(teacher_file)
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
    # the released caption file lost the failed video's caption; its full version is kept for later runs
    assert "bad#0" not in caption_ids(root, "test")
    with open(path(root, "TextData", f"{COLLECTION}test.caption.all.txt")) as f:
        assert "bad#0 the red box" in f.read()


def test_missing_video_is_a_clear_error(raw, models, tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("v0 one\nv1 two\nv3 three\ngone#enc#2 not on disk\n")
    with pytest.raises(SystemExit, match=r"caption 'gone#enc#2': its video 'gone' is in none of the --videos "
                                         r"folders .*videos.*frames"):
        prepare.main([str(tmp_path), COLLECTION, "--videos", raw["videos"], raw["frames"], "--captions", str(caps),
                      *model_flags(models)])


def test_a_collection_where_no_video_decodes_is_an_error(raw, models, tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("bad one\nbad two\n")
    with pytest.raises(SystemExit, match="none of the 1 videos could be decoded .*bad: InvalidDataError"):
        prepare.main([str(tmp_path), COLLECTION, "--videos", raw["videos"], "--captions", str(caps),
                      "--split_rule", "ratio:1,0,0", *model_flags(models)])
    assert not os.path.exists(path(str(tmp_path), "TextData", f"{COLLECTION}train.caption.txt"))
    assert not os.path.exists(path(str(tmp_path), "FeatureData", FEATURE))  # nothing training would read
    assert not os.path.exists(path(str(tmp_path), "FeatureData", f"new_clip_vit_32_{COLLECTION}_vid_features.hdf5"))


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("where", ["encode", "transform"])
def test_an_encoder_error_stops_the_run_with_nothing_final(raw, models, tmp_path, monkeypatch, where):
    """A model's error (encode in this thread, the processor in a decoding thread) is no failed video: it stops
    the run with that error, the bad video among the good ones notwithstanding, and nothing is finished."""
    caps = tmp_path / "caps.txt"
    caps.write_text("v0 one\nbad two\nv1 three\n")
    if where == "encode":
        monkeypatch.setattr(encoders.ImageEncoder, "encode", _raise(RuntimeError("boom")))
        expected = RuntimeError
    else:
        monkeypatch.setattr(encoders.VideoEncoder, "transform", _raise(TypeError("unexpected keyword 'images'")))
        expected = TypeError
    root = str(tmp_path / "data")
    with pytest.raises(expected, match="boom|unexpected keyword"):
        prepare.main([root, COLLECTION, "--videos", raw["videos"], "--captions", str(caps),
                      "--split_rule", "ratio:1,0,0", *model_flags(models)])
    feature_dir = path(root, "FeatureData")
    teacher_file = os.path.join(feature_dir, f"new_clip_vit_32_{COLLECTION}_vid_features.hdf5")
    assert sorted(os.listdir(feature_dir)) == [os.path.basename(teacher_file) + ".partial"]
    assert not os.path.exists(path(root, "prepare_failed_videos.txt"))
    assert not os.path.exists(path(root, "TextData", f"{COLLECTION}train.caption.txt"))


def test_siglip_teacher_is_written_under_its_own_name(prepared, raw, models, tmp_path, capsys):
    root = str(tmp_path / "data")
    shutil.copytree(prepared, root)
    capsys.readouterr()
    assert prepare.main([root, COLLECTION, "--videos", raw["videos"], raw["frames"], "--captions", raw["captions"],
                         "--split_rule", "ratio:0.5,0.25,0.25", *model_flags(models, teacher="siglip"),
                         "--text_model", "none"]) == 0
    out = capsys.readouterr().out
    assert ("--teacher_video_file tiny_siglip_toy_vid_features.hdf5 "
            "--teacher_query_file tiny_siglip_toy_query_feat.hdf5") in out
    video = read_h5(path(root, "FeatureData", "tiny_siglip_toy_vid_features.hdf5"))
    text = read_h5(path(root, "TextData", "tiny_siglip_toy_query_feat.hdf5"))
    store = BigFile(path(root, "FeatureData", FEATURE))
    assert {v: a.shape for v, a in video.items()} == {v: (store.n_frames(v), SIGLIP_DIM) for v in store.keys()}
    assert all(a.shape == (SIGLIP_DIM,) for a in text.values())
    assert read_tree(path(root, "FeatureData", FEATURE)) == read_tree(path(prepared, "FeatureData", FEATURE))


def test_convert_round_trip_is_bit_identical(prepared, tmp_path):
    src = path(prepared, "FeatureData", FEATURE)
    h5_file, back = str(tmp_path / f"{FEATURE}.hdf5"), str(tmp_path / FEATURE)
    assert convert.main([src, h5_file]) == 0
    store = BigFile(src)
    arrays = read_h5(h5_file)
    with h5py.File(h5_file, "r") as f:
        assert list(f.keys()) == list(writers.read_video2frames(src))  # video order kept
    assert all(np.array_equal(arrays[v], store.read_video(v)) for v in store.keys())
    assert convert.main([h5_file]) == 0  # default output: the name without .hdf5
    for name in ("feature.bin", "shape.txt", "id.txt", "video2frames.txt"):
        with open(os.path.join(src, name), "rb") as a, open(os.path.join(back, name), "rb") as b:
            assert a.read() == b.read(), name
    with pytest.raises(SystemExit, match="--overwrite"):
        convert.main([h5_file, back])
    # a BigFile with its own row ids and rows out of video order keeps the ids and every video's frames
    expected = write_bigfile(str(tmp_path / "shuffled"), {"a": 3, "b": 2}, np.random.default_rng(0),
                             shuffle_rows=True)
    assert convert.main([str(tmp_path / "shuffled"), str(tmp_path / "s.hdf5")]) == 0
    assert convert.main([str(tmp_path / "s.hdf5"), str(tmp_path / "s")]) == 0
    again = BigFile(str(tmp_path / "s"))
    assert all(np.array_equal(again.read_video(v), expected[v]) for v in expected)
    assert writers.read_video2frames(str(tmp_path / "s")) == writers.read_video2frames(str(tmp_path / "shuffled"))
