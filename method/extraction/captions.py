"""Caption files: reading the released ones, or one caption file plus a split rule; writing the three.

Released format: ``TextData/<collection><split>.caption.txt``, one
``<cap_id> <caption>`` a line, video_id = ``cap_id.split('#')[0]``. A split
is a list of (cap_id, text) in file order.
"""
import hashlib
import os
import shutil

from method.data.bigfile import DataError
from method.data.captions import read_caption_file
from method.extraction.writers import write_text_atomic

SPLITS = ("train", "val", "test")
# Kept beside a caption file that a run rewrote without the videos that failed to decode.
FULL_SUFFIX = ".all.txt"


def video_id(cap_id):
    return cap_id.split("#")[0]


def caption_path(root_path, collection, split):
    return os.path.join(root_path, collection, "TextData", f"{collection}{split}.caption.txt")


def read_captions(root_path, collection, splits=SPLITS):
    """Captions of the caption files of `splits` that exist (lenient: empty captions allowed).

    Returns:
        (captions, video_ids, missing_files): dict cap_id -> text in file order
        (first occurrence wins), the ordered set of their video ids, and the
        caption files that do not exist.
    """
    captions, missing = {}, []
    for split in splits:
        path = caption_path(root_path, collection, split)
        if not os.path.isfile(path):
            missing.append(path)
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(None, 1)
                if parts:
                    captions.setdefault(parts[0], parts[1] if len(parts) > 1 else "")
    return captions, list(dict.fromkeys(video_id(c) for c in captions)), missing


def _read(path):
    """[(cap_id, text)] of one caption file, checked as training checks it."""
    try:
        caps = read_caption_file(path)
    except DataError as exc:
        raise SystemExit(str(exc)) from None
    return [(c, caps.captions[c]) for c in caps.cap_ids]


def released_captions(root_path, collection):
    """The three caption files of TextData (or the full versions a run kept, see FULL_SUFFIX).

    Returns:
        dict split -> [(cap_id, text)].
    """
    splits, missing = {}, []
    for split in SPLITS:
        path = caption_path(root_path, collection, split)
        full = path[:-len(".txt")] + FULL_SUFFIX
        if os.path.isfile(full):
            path = full
        if not os.path.isfile(path):
            missing.append(path)
            continue
        splits[split] = _read(path)
    if missing:
        raise SystemExit("missing caption files " + ", ".join(missing) + ": put the three caption files in "
                         "TextData/, or give one caption file with --captions FILE and a --split_rule")
    return splits


def read_single_file(path):
    """Captions of one file, ``<id> <caption>`` a line.

    An id with a '#' is a caption id; an id without one is a video id, and its
    captions get the ids ``<video_id>#<n>`` (n = 0, 1, ... in file order).

    Returns:
        [(cap_id, text)] in file order.
    """
    captions, counts, seen = [], {}, set()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.strip().split(None, 1)
            if not parts:
                continue
            if len(parts) != 2:
                raise SystemExit(f"{path}, line {line_no}: expected '<cap_id or video_id> <caption>', "
                                 f"got {line.strip()[:80]!r}")
            key, text = parts
            if "#" not in key:
                n = counts.get(key, 0)
                counts[key] = n + 1
                key = f"{key}#{n}"
            if key in seen:
                raise SystemExit(f"{path}, line {line_no}: caption id {key!r} appears twice")
            seen.add(key)
            captions.append((key, text))
    if not captions:
        raise SystemExit(f"{path}: no captions")
    return captions


def _ratio_split(video_ids, ratios, seed):
    """video_id -> split: videos ordered by a seeded hash of their id, cut at the ratios.

    Counts are the ratios times the number of videos, rounded by largest
    remainder; every split with a positive ratio gets a video when there are enough.
    """
    order = sorted(video_ids, key=lambda v: hashlib.sha1(f"{seed}:{v}".encode()).hexdigest())
    n, total = len(order), sum(ratios)
    exact = [r / total * n for r in ratios]
    counts = [int(x) for x in exact]
    for i in sorted(range(3), key=lambda i: counts[i] - exact[i])[:n - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if ratios[i] > 0 and counts[i] == 0 and max(counts) > 1:
            counts[counts.index(max(counts))] -= 1
            counts[i] = 1
    assignment, start = {}, 0
    for split, count in zip(SPLITS, counts):
        assignment.update((vid, split) for vid in order[start:start + count])
        start += count
    return assignment


def _file_split(path, video_ids):
    """video_id -> split from a file of ``<video_id> <split>`` lines."""
    assignment = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in SPLITS:
                raise SystemExit(f"{path}, line {line_no}: expected '<video_id> train|val|test', got {line.strip()!r}")
            assignment[parts[0]] = parts[1]
    unlisted = [vid for vid in video_ids if vid not in assignment]
    if unlisted:
        raise SystemExit(f"{path}: {len(unlisted)} videos of the captions have no split, e.g. {unlisted[:5]}")
    return assignment


def parse_split_rule(rule):
    """``ratio:A,B,C`` -> ("ratio", (A, B, C)); ``file:PATH`` -> ("file", PATH); else SystemExit."""
    kind, _, value = rule.partition(":")
    if kind == "file" and value:
        return kind, value
    if kind == "ratio":
        try:
            ratios = tuple(float(x) for x in value.split(","))
        except ValueError:
            ratios = ()
        if len(ratios) == 3 and min(ratios) >= 0 and sum(ratios) > 0:
            return kind, ratios
    raise SystemExit(f"--split_rule {rule!r}: expected ratio:TRAIN,VAL,TEST (e.g. ratio:0.7,0.1,0.2) or file:PATH")


def split_captions(captions, rule, seed):
    """Split [(cap_id, text)] by video with a parsed split rule -> dict split -> [(cap_id, text)]."""
    video_ids = list(dict.fromkeys(video_id(c) for c, _ in captions))
    kind, value = rule
    assignment = _ratio_split(video_ids, value, seed) if kind == "ratio" else _file_split(value, video_ids)
    splits = {split: [] for split in SPLITS}
    for cap_id, text in captions:
        splits[assignment[video_id(cap_id)]].append((cap_id, text))
    return splits


def write_caption_files(root_path, collection, splits, dropped, keep_full):
    """Write the three caption files without the captions of the `dropped` videos.

    Files whose content would not change are not touched. With `keep_full`
    (the captions came from these very files) the full version of a file that
    loses captions is kept as ``<collection><split>.caption.all.txt`` (later
    runs read it, so a video repaired later comes back); once nothing is
    dropped, the full version is removed.

    Returns:
        the paths written.
    """
    written = []
    for split in SPLITS:
        path = caption_path(root_path, collection, split)
        full_path = path[:-len(".txt")] + FULL_SUFFIX
        captions = splits.get(split, [])
        kept = [(c, t) for c, t in captions if video_id(c) not in dropped]
        has_full = os.path.isfile(full_path)
        if keep_full and len(kept) == len(captions) and not has_full:
            continue  # the source file itself, complete: left as it is
        if keep_full and len(kept) < len(captions) and not has_full:
            shutil.copyfile(path, full_path)
        text = "".join(f"{c} {t}\n" for c, t in kept)
        old = None
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
        if old != text:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_text_atomic(path, text)
            written.append(path)
        if keep_full and len(kept) == len(captions) and has_full:
            os.remove(full_path)
    return written
