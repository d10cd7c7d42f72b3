"""Tests of method/extract_teacher.py with a tiny random CLIP, short PyAV videos and PNG frame folders.

Nothing is downloaded: the CLIP model, its tokenizer and image processor are
built here and loaded from a temporary folder. The whole module is skipped
where the optional extractor requirements (requirements-extract.txt) are absent.

`make_dataset_around_teacher(tmp_path)` builds a complete tiny dataset folder
(captions, RoBERTa-like token features, student BigFile, extracted teacher
files) for end-to-end tests of training.
"""
import hashlib
import json
import os
import string
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

# huggingface_hub reads this when it is imported: set it before transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

from method.data.bigfile import parse_video2frames  # noqa: E402
from method.extraction import teacher as et  # noqa: E402  (after the optional-dependency skips)
from method.extraction.encoders import DualProcessors  # noqa: E402

PROJ_DIM = 24
COLLECTION = "toy"
VIDEO_FPS = 10


# --------------------------------------------------------------------------- #
# builders (also used by make_dataset_around_teacher)
# --------------------------------------------------------------------------- #
def make_tiny_clip(folder):
    """Save a tiny randomly initialised CLIP with its processor to `folder`, offline.

    Vision: 32x32 images, 8x8 patches; text: a character-level BPE vocabulary
    (printable ASCII, no merges but one) and 77 positions; projection_dim 24.
    """
    os.makedirs(folder, exist_ok=True)
    chars = [c for c in string.printable if not c.isspace()]
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["th", "the</w>"])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\nt h\nth e</w>\n")
    tokenizer = transformers.CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, **special),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=PROJ_DIM)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                      crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def write_video(path, n_frames, fps=VIDEO_FPS, size=32, seed=0):
    """Encode `n_frames` random RGB frames as an MPEG-4 video at `fps`."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(n_frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frame_folder(folder, n_frames, size=40, seed=0):
    """Write `n_frames` random PNG frames named 00001.png, 00002.png, ... (TVQA style)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_frames):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"{i + 1:05d}.png"))


def write_captions(root, collection, split_captions):
    """Write TextData/<collection><split>.caption.txt from {split: [(cap_id, text), ...]}."""
    text_dir = os.path.join(root, collection, "TextData")
    os.makedirs(text_dir, exist_ok=True)
    for split, caps in split_captions.items():
        with open(os.path.join(text_dir, f"{collection}{split}.caption.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{cap_id} {text}\n" for cap_id, text in caps)


def write_student_bigfile(root, collection, visual_feature, counts, dim=16, seed=0):
    """Write a student BigFile folder FeatureData/<visual_feature>/ with counts[vid] rows per video."""
    folder = os.path.join(root, collection, "FeatureData", visual_feature)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"{vid}_{i}" for vid, n in counts.items() for i in range(n)]
    rng.standard_normal((len(ids), dim)).astype("<f4").tofile(os.path.join(folder, "feature.bin"))
    with open(os.path.join(folder, "shape.txt"), "w") as f:
        f.write(f"{len(ids)} {dim}")
    with open(os.path.join(folder, "id.txt"), "w") as f:
        f.write(" ".join(ids))
    with open(os.path.join(folder, "video2frames.txt"), "w") as f:
        f.write(repr({vid: [f"{vid}_{i}" for i in range(n)] for vid, n in counts.items()}))


def write_student_hdf5(root, collection, visual_feature, counts, dim=16, seed=0):
    """Write student features FeatureData/<visual_feature>.hdf5 with counts[vid] rows per video."""
    folder = os.path.join(root, collection, "FeatureData")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    with h5py.File(os.path.join(folder, f"{visual_feature}.hdf5"), "w") as f:
        for vid, n in counts.items():
            f.create_dataset(vid, data=rng.standard_normal((n, dim)).astype(np.float32))


def write_token_features(root, collection, cap_ids, dim=768, seed=0):
    """Write RoBERTa-like TextData/roberta_<collection>_query_feat.hdf5: cap_id -> (n_tokens, dim)."""
    rng = np.random.default_rng(seed)
    path = os.path.join(root, collection, "TextData", f"roberta_{collection}_query_feat.hdf5")
    with h5py.File(path, "w") as f:
        for cap_id in cap_ids:
            f.create_dataset(cap_id, data=rng.standard_normal((int(rng.integers(5, 40)), dim)).astype(np.float32))


def read_h5(path):
    """{key: array} of an HDF5 file."""
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys()}


def file_digest(path):
    """SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_dataset_around_teacher(tmp_path, collection="tvr", visual_feature="i3d_resnet",
                                student_dim=3072, text_dim=768):
    """A complete tiny dataset in the released layout, with teacher files made by the extractor.

    Eight videos (MPEG-4, 32x32 px, 10 fps, 1.2 to 3.0 s): vid00-vid03 train
    (2 captions each), vid04-vid05 val, vid06-vid07 test (1 to 2 captions),
    TVR-style cap ids ``<vid>#enc#<n>``. Writes the caption files, the
    RoBERTa-like token features, the student BigFile (3 to 8 clips a video)
    and runs ``method.extract_teacher --align_to_student`` with a tiny CLIP,
    so teacher and student frame counts are equal.

    Returns:
        dict with root_path, collection, visual_feature, student_dim, text_dim,
        teacher_dim, clip_model, videos_dir, teacher_video_file,
        teacher_query_file (full paths), video_ids {split: [...]} and
        cap_ids {split: [...]}.
    """
    root = os.path.join(tmp_path, "data")
    videos_dir = os.path.join(tmp_path, "raw_videos")
    os.makedirs(videos_dir, exist_ok=True)
    rng = np.random.default_rng(7)
    split_videos = {"train": [f"vid{i:02d}" for i in range(4)],
                    "val": ["vid04", "vid05"], "test": ["vid06", "vid07"]}
    counts, split_caps = {}, {}
    for split, vids in split_videos.items():
        split_caps[split] = []
        for vid in vids:
            n_decoded = int(rng.integers(12, 31))
            write_video(os.path.join(videos_dir, f"{vid}.mp4"), n_decoded, seed=int(vid[3:]))
            counts[vid] = int(rng.integers(3, 9))
            n_caps = 2 if split == "train" else int(rng.integers(1, 3))
            split_caps[split] += [(f"{vid}#enc#{k}", f"the person in {vid} does thing {k}") for k in range(n_caps)]
    write_captions(root, collection, split_caps)
    all_caps = [c for caps in split_caps.values() for c, _ in caps]
    write_token_features(root, collection, all_caps, dim=text_dim)
    write_student_bigfile(root, collection, visual_feature, counts, dim=student_dim)
    clip_dir = make_tiny_clip(os.path.join(tmp_path, "tiny_clip"))
    rc = et.main(["--root_path", root, "--collection", collection, "--videos", videos_dir,
                  "--align_to_student", "--visual_feature", visual_feature, "--clip_model", clip_dir,
                  "--device", "cpu", "--num_workers", "1", "--strict"])
    assert rc == 0
    video_file, query_file = et.output_paths(root, collection)
    return {"root_path": root, "collection": collection, "visual_feature": visual_feature,
            "student_dim": student_dim, "text_dim": text_dim, "teacher_dim": PROJ_DIM,
            "clip_model": clip_dir, "videos_dir": videos_dir,
            "teacher_video_file": video_file, "teacher_query_file": query_file,
            "video_ids": split_videos, "cap_ids": {s: [c for c, _ in caps] for s, caps in split_caps.items()}}


# --------------------------------------------------------------------------- #
# fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


# Decoded frames per input: two video files at 10 fps and one PNG folder (3 fps).
N_DECODED = {"clipA": 20, "clipB": 25, "framesC": 7}
CAPTIONS = {
    "train": [("clipA#0", "the man opens the door"), ("clipA#1", "a dog runs"),
              ("clipB#0", "the " * 200 + "long caption, truncated to 77 tokens")],
    "val": [("framesC#0", "someone sits down")],
    "test": [("clipB#1", "the end"), ("framesC#1", "")],
}
ALL_CAP_IDS = [c for caps in CAPTIONS.values() for c, _ in caps]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Folders of inputs: 'videos' (clipA.mp4, clipB.mp4) and 'frames' (framesC/00001.png ...)."""
    base = tmp_path_factory.mktemp("media")
    videos, frames = base / "videos", base / "frames"
    videos.mkdir()
    write_video(videos / "clipA.mp4", N_DECODED["clipA"], seed=1)
    write_video(videos / "clipB.mp4", N_DECODED["clipB"], seed=2)
    write_frame_folder(frames / "framesC", N_DECODED["framesC"], seed=3)
    return {"videos": str(videos), "frames": str(frames)}


@pytest.fixture
def root(tmp_path):
    """Dataset root with the caption files of collection 'toy'."""
    write_captions(str(tmp_path), COLLECTION, CAPTIONS)
    return str(tmp_path)


def run(root, videos, tiny_clip, *flags):
    """Run the extractor in-process on collection 'toy' with the tiny CLIP; returns its exit status."""
    return et.main(["--root_path", root, "--collection", COLLECTION, "--videos", videos,
                    "--clip_model", tiny_clip, "--device", "cpu", "--num_workers", "2", *flags])


def encode_reference(tiny_clip, images):
    """Features of `images` computed directly with the tiny CLIP (the extractor's expected output)."""
    model, processor = et.load_clip(tiny_clip, torch.device("cpu"))
    pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return et.encode_images(model, pixel_values, torch.device("cpu"), batch_size=4)


def frame_folder_images(folder, indices):
    """The frames at `indices` of a frame folder, as RGB PIL images."""
    files = sorted(os.listdir(folder))
    return [Image.open(os.path.join(folder, files[i])).convert("RGB") for i in indices]


# --------------------------------------------------------------------------- #
# pure functions
# --------------------------------------------------------------------------- #
def test_fps_indices_centres_of_windows():
    times = np.arange(20) / 10.0  # 2 s at 10 fps
    np.testing.assert_array_equal(et.fps_indices(times, 2.0, 2.0), [2, 7, 12, 17])
    np.testing.assert_array_equal(et.fps_indices(times, 2.0, 10.0), np.arange(20))
    np.testing.assert_array_equal(et.fps_indices(times, 2.0, 0.25), [10])  # shorter than one window: centre
    assert len(et.fps_indices(times, 2.0, 100.0)) == 200  # upsampling repeats frames
    assert et.fps_indices(times, 2.0, 100.0).max() == 19


def test_centre_indices_formula():
    for n_frames, n_clips in [(20, 5), (7, 3), (3, 7), (100, 33), (1, 4)]:
        expected = [min(int(np.floor((i + 0.5) * n_frames / n_clips)), n_frames - 1) for i in range(n_clips)]
        np.testing.assert_array_equal(et.centre_indices(n_frames, n_clips), expected)


def test_output_paths_and_teacher_name():
    video, text = et.output_paths("/d", "tvr")
    assert video == os.path.join("/d", "tvr", "FeatureData", "new_clip_vit_32_tvr_vid_features.hdf5")
    assert text == os.path.join("/d", "tvr", "TextData", "clip_ViT_B_32_tvr_query_feat.hdf5")
    video, text = et.output_paths("/d", "tvr", "clip_l14")
    assert video == os.path.join("/d", "tvr", "FeatureData", "clip_l14_tvr_vid_features.hdf5")
    assert text == os.path.join("/d", "tvr", "TextData", "clip_l14_tvr_query_feat.hdf5")


def test_find_sources_auto(media, tmp_path):
    assert et.find_sources(media["videos"], "auto", ["clipA", "clipB", "x"])[:2] == (
        "videos", {"clipA": os.path.join(media["videos"], "clipA.mp4"),
                   "clipB": os.path.join(media["videos"], "clipB.mp4")})
    kind, sources, _ = et.find_sources(media["frames"], "auto", ["framesC"])
    assert kind == "frames" and sources == {"framesC": os.path.join(media["frames"], "framesC")}


def test_importing_the_extractor_does_not_import_optional_packages():
    code = ("import sys, method.extract_teacher; "
            "bad = [m for m in ('transformers', 'av', 'PIL') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --------------------------------------------------------------------------- #
# end to end
# --------------------------------------------------------------------------- #
def test_fps_extraction_writes_both_files(root, media, tiny_clip, capsys):
    assert run(root, media["videos"], tiny_clip, "--fps", "2") == 0
    assert run(root, media["frames"], tiny_clip, "--fps", "2", "--frames_fps", "3") == 0
    video_file, text_file = et.output_paths(root, COLLECTION)

    text = read_h5(text_file)
    assert sorted(text) == sorted(ALL_CAP_IDS)
    assert all(v.shape == (PROJ_DIM,) and v.dtype == np.float32 for v in text.values())
    assert not np.allclose(text["clipA#0"], text["clipA#1"])

    video = read_h5(video_file)
    assert sorted(video) == ["clipA", "clipB", "framesC"]
    # rows = floor(duration * fps): 2.0 s, 2.5 s at 10 fps; 7 frames at 3 fps = 2.33 s
    assert {k: v.shape for k, v in video.items()} == {
        "clipA": (4, PROJ_DIM), "clipB": (5, PROJ_DIM), "framesC": (4, PROJ_DIM)}
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in video.values())
    # The frame folder rows are the frames shown at the window centres 0.25, 0.75, 1.25, 1.75 s
    # (frame i is shown from i/3 s on): frames 0, 2, 3, 5.
    expected = encode_reference(tiny_clip, frame_folder_images(os.path.join(media["frames"], "framesC"), [0, 2, 3, 5]))
    np.testing.assert_allclose(video["framesC"], expected, rtol=1e-5, atol=1e-6)
    assert "videos: 1 encoded (4 frames)" in capsys.readouterr().out


def test_rerun_adds_and_changes_nothing(root, media, tiny_clip, capsys, monkeypatch):
    assert run(root, media["videos"], tiny_clip, "--fps", "2") == 0
    video_file, text_file = et.output_paths(root, COLLECTION)
    before = {p: (file_digest(p), read_h5(p)) for p in (video_file, text_file)}
    capsys.readouterr()

    def forbidden(*args, **kwargs):
        raise AssertionError("nothing should be loaded or encoded on a rerun")
    monkeypatch.setattr(et, "load_clip", forbidden)
    monkeypatch.setattr(et, "encode_images", forbidden)
    assert run(root, media["videos"], tiny_clip, "--fps", "2") == 0
    out = capsys.readouterr().out
    assert "captions: 0 encoded, 6 already present" in out
    assert "videos: 0 encoded (0 frames), 2 already present" in out
    for path, (digest, arrays) in before.items():
        assert file_digest(path) == digest
        after = read_h5(path)
        assert after.keys() == arrays.keys()
        assert all(np.array_equal(after[k], arrays[k]) for k in arrays)


def test_resume_encodes_only_new_videos(root, media, tiny_clip, monkeypatch, capsys):
    video_file, _ = et.output_paths(root, COLLECTION)
    assert run(root, media["videos"], tiny_clip, "--fps", "2") == 0
    with h5py.File(video_file, "a") as f:  # as if the run had stopped after clipA
        kept = f["clipA"][()]
        del f["clipB"]
    encoded = []
    real = et.encode_images
    monkeypatch.setattr(et, "encode_images", lambda m, pv, *a: encoded.append(len(pv)) or real(m, pv, *a))
    capsys.readouterr()
    assert run(root, media["videos"], tiny_clip, "--fps", "2") == 0
    assert encoded == [5]
    assert "videos: 1 encoded (5 frames), 1 already present" in capsys.readouterr().out
    video = read_h5(video_file)
    assert np.array_equal(video["clipA"], kept) and video["clipB"].shape == (5, PROJ_DIM)


def test_changed_sampling_is_refused(root, media, tiny_clip):
    assert run(root, media["videos"], tiny_clip, "--fps", "2", "--skip_text") == 0
    video_file, _ = et.output_paths(root, COLLECTION)
    with h5py.File(video_file, "a") as f:
        del f["clipB"]
    with pytest.raises(SystemExit, match="sampling"):
        run(root, media["videos"], tiny_clip, "--fps", "1", "--skip_text")


@pytest.mark.parametrize("store", ["bigfile", "hdf5"])
def test_align_to_student_matches_student_frame_counts(root, media, tiny_clip, store):
    counts = {"clipA": 5, "clipB": 8, "framesC": 3}
    writer = write_student_bigfile if store == "bigfile" else write_student_hdf5
    writer(root, COLLECTION, "i3d_toy", counts)
    # Both folders in one run: a folder of video files and a folder of frame folders.
    assert run(root, media["videos"], tiny_clip, "--videos", media["frames"], "--align_to_student",
               "--visual_feature", "i3d_toy", "--teacher_name", "aligned", "--skip_text", "--strict") == 0
    video_file, text_file = et.output_paths(root, COLLECTION, "aligned")
    assert video_file.endswith(os.path.join("FeatureData", "aligned_toy_vid_features.hdf5"))
    assert not os.path.exists(text_file)
    video = read_h5(video_file)
    assert {k: v.shape[0] for k, v in video.items()} == counts
    # 7 frames, 3 clips: centre frames floor(7/6)=1, floor(21/6)=3, floor(35/6)=5
    expected = encode_reference(tiny_clip, frame_folder_images(os.path.join(media["frames"], "framesC"), [1, 3, 5]))
    np.testing.assert_allclose(video["framesC"], expected, rtol=1e-5, atol=1e-6)


def test_corrupt_and_missing_videos_are_reported_and_skipped(root, media, tiny_clip, tmp_path, capsys):
    videos = tmp_path / "mixed_videos"
    videos.mkdir()
    for name in ("clipA.mp4", "clipB.mp4"):
        os.symlink(os.path.join(media["videos"], name), videos / name)
    (videos / "clipBad.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (videos / "clipEmpty.mp4").write_bytes(b"")
    write_captions(root, COLLECTION, {**CAPTIONS, "test": CAPTIONS["test"] + [
        ("clipBad#0", "broken"), ("clipEmpty#0", "empty"), ("clipGone#0", "not on disk")]})
    assert run(root, str(videos), tiny_clip, "--fps", "2") == 0
    out = capsys.readouterr().out
    assert "videos: 2 encoded (9 frames), 0 already present, 2 missing from --videos, 2 failed" in out
    assert "clipBad: InvalidDataError" in out and "clipEmpty: InvalidDataError" in out
    assert "clipGone" in out and "framesC" in out
    video_file, _ = et.output_paths(root, COLLECTION)
    assert sorted(read_h5(video_file)) == ["clipA", "clipB"]
    assert run(root, str(videos), tiny_clip, "--fps", "2", "--strict") == 1


def test_frame_folder_without_images_is_reported(root, media, tiny_clip, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    os.symlink(os.path.join(media["frames"], "framesC"), frames / "framesC")
    (frames / "clipA").mkdir()  # a frame folder without images
    (frames / "clipA" / "notes.txt").write_text("not a frame")
    assert run(root, str(frames), tiny_clip, "--fps", "3", "--skip_text") == 0
    out = capsys.readouterr().out
    assert "videos: 1 encoded (7 frames), 0 already present, 1 missing from --videos, 1 failed" in out
    assert "clipA: no image files in the frame folder" in out


def corrupt_videos(folder):
    """A --videos folder where both caption videos are corrupt (random bytes, an empty file)."""
    folder.mkdir()
    (folder / "clipA.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "clipB.mp4").write_bytes(b"")
    return str(folder)


def test_every_video_corrupt_is_an_error(root, tiny_clip, tmp_path):
    videos = corrupt_videos(tmp_path / "corrupt")
    with pytest.raises(SystemExit, match=r"^none of the 2 videos could be encoded \(the first, clipA: "
                                         r"InvalidDataError.*\); nothing usable"):
        run(root, videos, tiny_clip, "--fps", "2", "--skip_text")
    video_file, _ = et.output_paths(root, COLLECTION)
    assert not os.path.exists(video_file) and os.path.isfile(video_file + ".partial")


@pytest.mark.slow  # a new interpreter
def test_every_video_corrupt_exits_non_zero_with_one_line(root, tiny_clip, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", "method.extract_teacher", "--root_path", root, "--collection",
                           COLLECTION, "--videos", corrupt_videos(tmp_path / "corrupt"), "--clip_model", tiny_clip,
                           "--device", "cpu", "--fps", "2", "--skip_text"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("none of the 2 videos could be encoded (the first, clipA: InvalidDataError"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("where", ["encode", "processor"])
def test_a_model_error_stops_the_run(root, media, tiny_clip, tmp_path, monkeypatch, where):
    """An error of the model (main thread) or of its image processor (decoding thread) is no failed video."""
    videos = tmp_path / "mixed"
    videos.mkdir()
    os.symlink(os.path.join(media["videos"], "clipA.mp4"), videos / "clipA.mp4")
    (videos / "clipB.mp4").write_bytes(b"")  # a corrupt one too: it does not hide the error

    def fail(*args, **kwargs):
        raise RuntimeError("boom") if where == "encode" else TypeError("unexpected keyword 'images'")
    if where == "encode":
        monkeypatch.setattr(et, "encode_images", fail)
    else:
        real = et.load_clip
        monkeypatch.setattr(et, "load_clip", lambda *a: (real(*a)[0], DualProcessors(fail, None)))
    with pytest.raises(RuntimeError if where == "encode" else TypeError, match="boom|unexpected keyword"):
        run(root, str(videos), tiny_clip, "--fps", "2", "--skip_text")
    video_file, _ = et.output_paths(root, COLLECTION)
    assert not os.path.exists(video_file) and os.path.isfile(video_file + ".partial")


@pytest.mark.slow
def test_shell_wrapper_runs_the_extractor(root, media, tiny_clip):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run([os.path.join(repo, "do_extract_teacher.sh"), ".", COLLECTION, media["videos"],
                           "--fps", "1", "--clip_model", tiny_clip, "--device", "cpu", "--teacher_name", "sh"],
                          cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "train with: --teacher_video_file sh_toy_vid_features.hdf5" in proc.stdout
    video_file, text_file = et.output_paths(root, COLLECTION, "sh")
    assert {k: v.shape[0] for k, v in read_h5(video_file).items()} == {"clipA": 2, "clipB": 2}
    assert len(read_h5(text_file)) == len(ALL_CAP_IDS)


def test_make_dataset_around_teacher(tmp_path):
    info = make_dataset_around_teacher(tmp_path)
    video = read_h5(info["teacher_video_file"])
    text = read_h5(info["teacher_query_file"])
    all_vids = [v for vids in info["video_ids"].values() for v in vids]
    all_caps = [c for caps in info["cap_ids"].values() for c in caps]
    assert sorted(video) == sorted(all_vids) and sorted(text) == sorted(all_caps)
    v2f_path = os.path.join(info["root_path"], info["collection"], "FeatureData", info["visual_feature"],
                            "video2frames.txt")
    with open(v2f_path) as f:
        v2f = parse_video2frames(f.read())
    assert {v: len(rows) for v, rows in v2f.items()} == {v: a.shape[0] for v, a in video.items()}
    roberta = os.path.join(info["root_path"], info["collection"], "TextData",
                           f"roberta_{info['collection']}_query_feat.hdf5")
    with h5py.File(roberta, "r") as f:
        assert sorted(f.keys()) == sorted(all_caps) and f[all_caps[0]].shape[1] == info["text_dim"]


def test_extracted_teacher_trains_one_epoch(tmp_path):
    """The written teacher files feed train.py as they are (teacher on, one epoch, then test evaluation)."""
    from method import train

    info = make_dataset_around_teacher(tmp_path, student_dim=32, text_dim=24)
    run_dir = tmp_path / "run"
    result = train.main(["--root_path", info["root_path"], "--collection", info["collection"],
                         "--visual_feature", info["visual_feature"], "--results_dir", str(run_dir),
                         "--n_epoch", "1", "--bsz", "2", "--hidden_size", "16", "--n_heads", "2",
                         "--device", "cpu", "--num_workers", "0", "--kd_schedule", "exp_decay"])
    with open(run_dir / "metrics.csv") as f:
        header, row = f.read().splitlines()[:2]
    assert "kd" in header.split(",")
    kd = float(row.split(",")[header.split(",").index("kd")])
    assert kd > 0 and np.isfinite(kd)
    assert result["n_queries"] == len(info["cap_ids"]["test"])
