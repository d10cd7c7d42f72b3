"""Generator of a small demo dataset in exactly the released on-disk layout.

    python -m method.demo_data ROOT [--collection tvr] [--videos 1000] [--seed 0]

writes ROOT/<collection>/{TextData,FeatureData,results} with the released file
names (BigFile student frames, RoBERTa-like token HDF5, CLIP-like teacher
HDF5s, three caption files) and, since the generator knows where each
caption's moment is, a ground-truth moments file
(TextData/<collection>_moments.txt, see method.data.moment_file) for the moment
evaluation of method.analysis.explore. Only the sizes differ from the real packages (defaults: 1000 videos split 550/150/300, 12-48 frames each, student frames
128-d, text 64-d, teacher 32-d) so that a run trains in about a minute on a
CPU; the folder names stay those of the collection (e.g.
FeatureData/i3d_resnet for tvr). Videos stay below the 128-frame cap (the
pooling of longer ones is covered by the unit tests of method.data).

The data carries structure a retrieval model can learn:

- concepts = action x object pairs (24 x 24), each with a latent vector (the
  sum of an action latent and an object latent, so words compose and concepts
  sharing a word are similar);
- each untrimmed video = 3-6 moments of distinct concepts on a background
  scene; each caption (1-5 per video) describes one moment of its video with
  its action and object words among filler words (token features = word
  embedding + contextual noise, with <s> and </s> tokens);
- student frames = a fixed random projection of the frame's latent + strong
  noise (low SNR: the student has to learn to pool evidence);
- teacher (CLIP-like) frames and sentences = another projection with little
  noise, so the teacher localises moments sharply, but it merges a fraction of
  the concepts with a partner of the same object and another action (its
  domain gap: a frame model is weak at actions), which the exploration branch
  can learn to separate. Merged partners co-occur in some videos (opens /
  closes the door), where the teacher's frame distribution is wrong. Teacher
  frame counts differ from the student's for some videos (exercising the
  frame alignment).

All knobs are fields of `DemoConfig`; `generate(..., **overrides)` changes them.
The output is a deterministic function of (collection, n_videos, seed, knobs).
"""

import argparse
import os
import time
from dataclasses import dataclass, replace

import h5py
import numpy as np

from method.common.cli import HelpFormatter
from method.data import caption_key_candidates
from method.data.moment_file import moments_path, write_moments
from method.data.paths import teacher_file_names

__all__ = ["DEFAULT_VIDEOS", "DemoConfig", "VISUAL_FEATURES", "generate", "main"]

VISUAL_FEATURES = {"tvr": "i3d_resnet", "activitynet": "i3d", "charades": "i3d_rgb_lgi"}

ACTIONS = ["opens", "closes", "holds", "throws", "cleans", "paints", "carries", "drops",
           "kicks", "pushes", "lifts", "washes", "fixes", "hides", "sells", "eats",
           "grabs", "fills", "moves", "checks", "breaks", "buys", "shows", "taps"]
OBJECTS = ["door", "box", "cup", "ball", "chair", "table", "phone", "book",
           "bottle", "bag", "lamp", "window", "car", "plate", "guitar", "laptop",
           "jacket", "bowl", "pillow", "camera", "knife", "glass", "letter", "key"]
FILLERS = ["a", "the", "then", "while", "in", "room", "quickly", "slowly", "and", "after",
           "person", "man", "woman", "someone", "near", "kitchen", "outside", "again", "with", "her",
           "his", "friend", "talks", "looks", "at", "it", "before", "leaving", "smiles", "there"]
SUBJECTS = ["someone", "a man", "a woman", "the person", "he", "she"]


@dataclass(frozen=True)
class DemoConfig:
    """Knobs of the generator (sizes, signal-to-noise ratios, teacher gap)."""

    visual_dim: int = 128           # student frame features (real TVR: 3072)
    text_dim: int = 64              # token features (real: 768 / 1024)
    teacher_dim: int = 32           # CLIP-like features (real: 512)
    latent_dim: int = 24            # concept latent space
    n_actions: int = 24
    n_objects: int = 24
    n_backgrounds: int = 8          # background scenes shared across videos
    min_frames: int = 12
    max_frames: int = 48            # short videos: the step cost grows with the padded frame count
    min_moments: int = 3
    max_moments: int = 6
    max_captions: int = 5
    moment_fraction: tuple = (0.3, 0.8)   # share of its time slot a moment covers
    student_snr: float = 0.8        # per-dim signal / noise amplitude of student frames
    teacher_snr: float = 4.0        # same for teacher frames (sharp localisation)
    teacher_text_noise: float = 0.1  # noise of teacher sentence vectors (relative)
    text_noise: float = 0.3         # contextual noise of token features (relative)
    confusion_rate: float = 0.5     # share of concepts the teacher merges with a partner (same object)
    partner_rate: float = 0.5       # chance that a video shows a teacher-merged pair of concepts
    teacher_length_mismatch: float = 0.3  # share of videos whose teacher frame count differs
    max_fillers: int = 8            # filler words after the concept
    split_fractions: tuple = (0.55, 0.15, 0.3)


DEFAULT_VIDEOS = 1000


class _World:
    """The fixed random parts: latents, projections, word embeddings."""

    def __init__(self, cfg, rng):
        self.cfg = cfg
        self.actions = _names(ACTIONS, cfg.n_actions, "act")
        self.objects = _names(OBJECTS, cfg.n_objects, "obj")
        action_latent = rng.standard_normal((cfg.n_actions, cfg.latent_dim))
        object_latent = rng.standard_normal((cfg.n_objects, cfg.latent_dim))
        # concept c = (c // n_objects, c % n_objects)
        concept = (action_latent[:, None, :] + object_latent[None, :, :]).reshape(-1, cfg.latent_dim)
        self.concept_latent = _unit(concept)
        self.n_concepts = len(concept)
        self.background_latent = _unit(rng.standard_normal((cfg.n_backgrounds, cfg.latent_dim)))
        self.student_proj = rng.standard_normal((cfg.latent_dim, cfg.visual_dim))
        self.teacher_proj = rng.standard_normal((cfg.latent_dim, cfg.teacher_dim))
        # The teacher's domain gap (a frame model is weak at actions): it merges pairs of
        # concepts with the same object and different actions into one latent.
        pairs = []
        for obj in range(cfg.n_objects):
            acts = rng.permutation(cfg.n_actions)
            pairs += [(acts[i] * cfg.n_objects + obj, acts[i + 1] * cfg.n_objects + obj)
                      for i in range(0, cfg.n_actions - 1, 2)]
        n_pairs = min(len(pairs), int(round(cfg.confusion_rate * self.n_concepts / 2)))
        merged = np.array(pairs, dtype=np.int64)[rng.permutation(len(pairs))[:n_pairs]].reshape(-1, 2)
        n_merged = 2 * len(merged)
        self.merged_pairs = merged
        teacher_latent = self.concept_latent.copy()
        teacher_latent[merged[:, 0]] = teacher_latent[merged[:, 1]] = _unit(
            self.concept_latent[merged[:, 0]] + self.concept_latent[merged[:, 1]])
        self.teacher_latent = teacher_latent
        self.n_merged = n_merged
        vocab = ["<s>", "</s>"] + self.actions + self.objects + sorted(set(FILLERS) | {
            w for s in SUBJECTS for w in s.split()})
        self.word_index = {w: i for i, w in enumerate(vocab)}
        self.word_emb = rng.standard_normal((len(vocab), cfg.text_dim))


def _names(base, n, prefix):
    return [base[i] if i < len(base) else f"{prefix}{i}" for i in range(n)]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _frame_labels(n_frames, starts, stops, mids):
    """Moment index of each of n frames (-1 = background) from normalised spans.

    A frame belongs to moment j when its centre lies in [starts[j], stops[j]);
    a moment with no such frame gets the frame under its midpoint.
    """
    centres = (np.arange(n_frames) + 0.5) / n_frames
    inside = (centres[None, :] >= starts[:, None]) & (centres[None, :] < stops[:, None])  # (M, n)
    labels = np.where(inside.any(0), inside.argmax(0), -1)
    empty = ~inside.any(1)
    labels[np.floor(mids[empty] * n_frames).astype(np.int64)] = np.flatnonzero(empty)
    return labels


def _frames(latents, proj, snr, rng):
    """Frame features = latent @ proj + N(0, 1/snr^2) per dim -> float32 (n, D)."""
    signal = latents @ proj  # unit latents, N(0, 1) projection: per-dim std 1
    return (signal + rng.standard_normal(signal.shape) / snr).astype(np.float32)


def _make_video(world, rng):
    """One untrimmed video: student frames (n, Dv), teacher frames (nt, Dt), its moments' concepts (M,),
    their spans on the student frames, int64 (M, 2) [start, end), and its ``VideoLayout`` (for a second teacher)."""
    cfg = world.cfg
    n = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
    nt = n
    if rng.random() < cfg.teacher_length_mismatch:
        nt = max(2, int(round(n * rng.uniform(0.5, 1.5))))
    n_moments = int(rng.integers(cfg.min_moments, cfg.max_moments + 1))
    concepts = rng.choice(world.n_concepts, n_moments, replace=False)
    if len(world.merged_pairs) and n_moments >= 2 and rng.random() < cfg.partner_rate:
        # Related actions on one object co-occur (opens / closes the door): a merged pair.
        pair = world.merged_pairs[rng.integers(len(world.merged_pairs))]
        others = [c for c in concepts if c not in pair][: n_moments - 2]
        concepts = rng.permutation(np.concatenate([pair, others]).astype(np.int64))
    background = int(rng.integers(cfg.n_backgrounds))
    # Each moment lies in its own time slot, covering part of it.
    width = 1.0 / n_moments
    frac = rng.uniform(*cfg.moment_fraction, n_moments) * width
    starts = np.arange(n_moments) * width + rng.uniform(0, 1, n_moments) * (width - frac)
    stops = starts + frac
    mids = (starts + stops) / 2

    def latents(table, labels):
        own = table[concepts[np.maximum(labels, 0)]]
        return np.where((labels >= 0)[:, None], own, world.background_latent[background])

    labels = _frame_labels(n, starts, stops, mids)
    student = _frames(latents(world.concept_latent, labels), world.student_proj, cfg.student_snr, rng)
    layout = VideoLayout(concepts, background, _frame_labels(nt, starts, stops, mids))
    teacher = _frames(layout.latents(world.teacher_latent, world.background_latent), world.teacher_proj,
                      cfg.teacher_snr, rng)
    return student, teacher, concepts, _moment_spans(labels, n_moments), layout


@dataclass(frozen=True)
class VideoLayout:
    """What a teacher sees of a video: its moments' concepts, its background and the moment of each teacher frame."""

    concepts: np.ndarray  # (M,)
    background: int
    teacher_labels: np.ndarray  # (nt,) moment index per teacher frame, -1 = background

    def latents(self, concept_table, background_table):
        """(nt, latent_dim): each teacher frame's latent in ``concept_table`` (background frames: the scene's)."""
        own = concept_table[self.concepts[np.maximum(self.teacher_labels, 0)]]
        return np.where((self.teacher_labels >= 0)[:, None], own, background_table[self.background])


class SecondTeacher:
    """Another CLIP-like teacher with another domain gap: it merges concepts of the same action on other objects.

    It draws from its own generator, so the rest of the dataset is the same with or without it.
    """

    def __init__(self, world, seed):
        cfg = world.cfg
        self.rng = np.random.default_rng([seed, 2])
        self.proj = self.rng.standard_normal((cfg.latent_dim, cfg.teacher_dim))
        pairs = []
        for act in range(cfg.n_actions):
            objs = self.rng.permutation(cfg.n_objects)
            pairs += [(act * cfg.n_objects + objs[i], act * cfg.n_objects + objs[i + 1])
                      for i in range(0, cfg.n_objects - 1, 2)]
        n_pairs = min(len(pairs), int(round(cfg.confusion_rate * world.n_concepts / 2)))
        merged = np.array(pairs, dtype=np.int64)[self.rng.permutation(len(pairs))[:n_pairs]].reshape(-1, 2)
        self.latent = world.concept_latent.copy()
        self.latent[merged[:, 0]] = self.latent[merged[:, 1]] = _unit(
            world.concept_latent[merged[:, 0]] + world.concept_latent[merged[:, 1]])
        self.n_merged = 2 * len(merged)
        self.world = world

    def frames(self, layout):
        """(nt, Dt) float32 frames of a video, on the first teacher's frame grid."""
        w = self.world
        return _frames(layout.latents(self.latent, w.background_latent), self.proj, w.cfg.teacher_snr, self.rng)

    def sentence(self, concept):
        """(Dt,) float32 sentence vector of a caption of ``concept``."""
        cfg = self.world.cfg
        v = self.latent[concept] @ self.proj
        noise = cfg.teacher_text_noise * np.linalg.norm(v) / np.sqrt(cfg.teacher_dim)
        return (v + noise * self.rng.standard_normal(cfg.teacher_dim)).astype(np.float32)


def _moment_spans(labels, n_moments):
    """Frame labels (n,) -> int64 (n_moments, 2): each moment's [start, end) in frames.

    A moment's frames are contiguous (moments lie in separate time slots).
    """
    inside = labels[None, :] == np.arange(n_moments)[:, None]  # (M, n)
    start = inside.argmax(1)
    end = len(labels) - inside[:, ::-1].argmax(1)
    return np.stack([start, end], 1)


def _make_caption(world, concept, rng):
    """Caption text, token features float32 (n_tokens, text_dim), teacher vector (teacher_dim,)."""
    cfg = world.cfg
    action = world.actions[concept // cfg.n_objects]
    obj = world.objects[concept % cfg.n_objects]
    words = (SUBJECTS[rng.integers(len(SUBJECTS))].split() + [action, "the", obj]
             + list(rng.choice(FILLERS, int(rng.integers(0, cfg.max_fillers + 1)))))
    tokens = np.array([world.word_index[w] for w in ["<s>"] + words + ["</s>"]])
    emb = world.word_emb[tokens]
    token_feat = (emb + cfg.text_noise * rng.standard_normal(emb.shape)).astype(np.float32)
    sentence = world.teacher_latent[concept] @ world.teacher_proj
    sentence = sentence + cfg.teacher_text_noise * np.linalg.norm(sentence) / np.sqrt(cfg.teacher_dim) \
        * rng.standard_normal(cfg.teacher_dim)
    return " ".join(words), token_feat, sentence.astype(np.float32)


def _video_ids(collection, n_videos):
    if collection == "tvr":
        return [f"demo_s01e{v // 50 + 1:02d}_seg02_clip_{v % 50:02d}" for v in range(n_videos)]
    return [f"v_demo{v:05d}" for v in range(n_videos)]


def _cap_id(collection, vid, j):
    return f"{vid}#enc#{j}" if collection == "tvr" else f"{vid}#{j}"


def _write_bigfile(folder, video_ids, frames):
    """Write the BigFile layout: rows of all videos in order, frame ids `<vid>_<i>`."""
    os.makedirs(folder, exist_ok=True)
    stacked = np.concatenate(frames).astype("<f4")
    stacked.tofile(os.path.join(folder, "feature.bin"))
    with open(os.path.join(folder, "shape.txt"), "w") as f:
        f.write(f"{stacked.shape[0]} {stacked.shape[1]}\n")
    video2frames = {vid: [f"{vid}_{i}" for i in range(len(x))] for vid, x in zip(video_ids, frames)}
    with open(os.path.join(folder, "id.txt"), "w") as f:
        f.write(" ".join(fid for fids in video2frames.values() for fid in fids) + "\n")
    with open(os.path.join(folder, "video2frames.txt"), "w") as f:
        f.write(repr(video2frames) + "\n")


def _write_h5(path, mapping):
    with h5py.File(path, "w") as f:
        for key, value in mapping.items():
            f.create_dataset(key, data=value)


def generate(root, collection="tvr", n_videos=DEFAULT_VIDEOS, seed=0, second_teacher=None, **overrides):
    """Write the demo dataset under `root/<collection>/`; returns a summary dict.

    `overrides` replace DemoConfig fields (e.g. student_snr=0.3). ``second_teacher``
    (a name) also writes the files of a second teacher (``SecondTeacher``) as the
    extractor names another teacher's: ``FeatureData/<name>_<collection>_vid_features.hdf5``
    and ``TextData/<name>_<collection>_query_feat.hdf5``; every other file is unchanged.
    """
    cfg = replace(DemoConfig(), **overrides)
    rng = np.random.default_rng(seed)
    world = _World(cfg, rng)
    second = SecondTeacher(world, seed) if second_teacher else None
    second_frames, second_sentences = {}, {}
    base = os.path.join(root, collection)
    text_dir, feat_dir = os.path.join(base, "TextData"), os.path.join(base, "FeatureData")
    for d in (text_dir, feat_dir, os.path.join(base, "results")):
        os.makedirs(d, exist_ok=True)

    video_ids = _video_ids(collection, n_videos)
    student, teacher, caption_lines, moments = [], {}, [], {}
    token_feats, sentence_feats = {}, {}
    for vid in video_ids:
        frames, teacher_frames, concepts, spans, layout = _make_video(world, rng)
        student.append(frames)
        teacher[vid] = teacher_frames
        if second is not None:
            second_frames[vid] = second.frames(layout)
        n_caps = int(rng.integers(1, min(cfg.max_captions, len(concepts)) + 1))
        lines = []
        for j, moment in enumerate(rng.choice(len(concepts), n_caps, replace=False)):
            cap_id = _cap_id(collection, vid, j)
            text, tokens, sentence = _make_caption(world, int(concepts[moment]), rng)
            lines.append(f"{cap_id} {text}")
            moments[cap_id] = spans[moment]
            token_feats[cap_id] = tokens
            # Every third CLIP key uses the other id form; shapes alternate (Dt,) / (1, Dt).
            clip_key = caption_key_candidates(cap_id)[1] if len(sentence_feats) % 3 == 2 else cap_id
            sentence_feats[clip_key] = sentence if len(sentence_feats) % 2 else sentence[None]
            if second is not None:
                second_sentences[cap_id] = second.sentence(int(concepts[moment]))
        caption_lines.append(lines)

    n_train = int(round(cfg.split_fractions[0] * n_videos))
    n_val = int(round(cfg.split_fractions[1] * n_videos))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n_videos)}
    for split, (lo, hi) in bounds.items():
        with open(os.path.join(text_dir, f"{collection}{split}.caption.txt"), "w") as f:
            f.writelines(line + "\n" for lines in caption_lines[lo:hi] for line in lines)

    _write_bigfile(os.path.join(feat_dir, VISUAL_FEATURES.get(collection, "features")), video_ids, student)
    _write_h5(os.path.join(text_dir, f"roberta_{collection}_query_feat.hdf5"), token_feats)
    clip_video, clip_text = teacher_file_names(collection)
    _write_h5(os.path.join(text_dir, clip_text), sentence_feats)
    _write_h5(os.path.join(feat_dir, clip_video), teacher)
    if second is not None:
        second_video, second_text = teacher_file_names(collection, second_teacher)
        _write_h5(os.path.join(feat_dir, second_video), second_frames)
        _write_h5(os.path.join(text_dir, second_text), second_sentences)
    write_moments(moments_path(root, collection),
                  {c: (int(a), int(b)) for c, (a, b) in moments.items()},
                  "ground truth of the demo data: the student frames [start, end) of each caption's moment")
    return {
        "path": base, "videos": n_videos, "splits": {s: hi - lo for s, (lo, hi) in bounds.items()},
        "captions": len(token_feats), "concepts": world.n_concepts, "teacher_merged": world.n_merged,
        "second_teacher_merged": None if second is None else second.n_merged,
        "dims": {"visual": cfg.visual_dim, "text": cfg.text_dim, "teacher": cfg.teacher_dim},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the DL-DKD demo dataset in the released layout.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("root", help="ROOTPATH; the data goes to ROOT/<collection>/")
    parser.add_argument("--collection", default="tvr", choices=sorted(VISUAL_FEATURES), help="collection name")
    parser.add_argument("--videos", type=int, default=DEFAULT_VIDEOS, help="videos in all splits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator")
    parser.add_argument("--second_teacher", metavar="NAME",
                        help="also write a second teacher, named NAME, whose domain gap differs from the first's "
                             "(it merges concepts of the same action instead of the same object); train with "
                             "--teachers clip,NAME (nothing else changes)")
    args = parser.parse_args(argv)
    t0 = time.time()
    info = generate(args.root, args.collection, args.videos, args.seed, args.second_teacher)
    s = info["splits"]
    print(f"demo data: {info['path']}: {info['videos']} videos (train/val/test {s['train']}/{s['val']}/{s['test']}), "
          f"{info['captions']} captions, {info['concepts']} concepts ({info['teacher_merged']} merged for the "
          f"teacher), dims visual/text/teacher {info['dims']['visual']}/{info['dims']['text']}/"
          f"{info['dims']['teacher']}, {time.time() - t0:.1f}s")

