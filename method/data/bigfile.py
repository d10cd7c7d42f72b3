"""Memory-mapped reader of the released "BigFile" feature folder.

Layout of a folder (see docs/data.md, "BigFile folders")::

    feature.bin        raw little-endian float32 rows, no header, (n_rows, dim)
    shape.txt          "<n_rows> <dim>"
    id.txt             the n_rows row ids, whitespace-separated, in row order
    video2frames.txt   a Python dict literal {video_id: [row id, ...]}

`feature.bin` is memory-mapped, never read into memory: a video costs one
(fancy-)index into the map.
"""

import ast
import os
import re

import numpy as np

__all__ = ["BigFile", "DataError", "parse_video2frames"]


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent with another one."""


# One quoted string without escapes: 'abc' or "abc" (group 1 or group 2).
_STR = r"""(?:'([^'\\\n]*)'|"([^"\\\n]*)")"""
# One dict entry `'key': [ ... ]` followed by a comma or the end of the dict.
_ENTRY_RE = re.compile(r"\s*" + _STR + r"\s*:\s*\[([^\]]*)\]\s*(?:,|(?=\}\Z))")
# One list item with its separator; group 1 is the whole match, so that the
# matched lengths tell whether the items tile the list body.
_ITEM_RE = re.compile(r"(\s*" + _STR + r"\s*(?:,|\Z))")


def _parse_list_body(body):
    """`'a', 'b', ...` -> ['a', 'b', ...], or None if not only quoted strings."""
    if not body.strip():
        return []
    found = _ITEM_RE.findall(body)
    # Non-overlapping matches in order whose lengths add up to the body's cover it.
    if sum(len(whole) for whole, _, _ in found) != len(body):
        return None
    return [a or b for _, a, b in found]


def _parse_video2frames_fast(text):
    """Regex parser of the `{'vid': ['f0', 'f1', ...], ...}` form.

    Returns the dict, or None when the text is not entirely of that form
    (escapes, non-string items, comments, ...), so the caller can fall back.
    """
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    result = {}
    pos, end = 1, len(text) - 1
    while pos < end:
        match = _ENTRY_RE.match(text, pos)
        if match is None:
            if text[pos:end].strip():
                return None
            break
        key = match.group(1) if match.group(1) is not None else match.group(2)
        frames = _parse_list_body(match.group(3))
        if frames is None or key in result:
            return None
        result[key] = frames
        pos = match.end()
    return result


def parse_video2frames(text, source="video2frames.txt"):
    """Parse a video2frames dict literal safely (never `eval`).

    Args:
        text: the file content, `{video_id: [row_id, ...], ...}`.
        source: name used in error messages.
    Returns:
        dict video_id (str) -> list of row ids (str), in file order.
    """
    parsed = _parse_video2frames_fast(text)
    if parsed is not None:
        return parsed
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise DataError(f"{source}: not a Python dict literal ({exc})") from exc
    if not isinstance(parsed, dict) or not all(isinstance(v, (list, tuple)) for v in parsed.values()):
        raise DataError(f"{source}: expected a dict {{video_id: [row_id, ...]}}")
    return {str(k): [str(f) for f in v] for k, v in parsed.items()}


def _read_shape(path):
    """Read shape.txt -> (n_rows, dim)."""
    try:
        with open(path, encoding="utf-8") as f:
            n_rows, dim = (int(tok) for tok in f.read().split())
    except ValueError as exc:
        raise DataError(f"{path}: expected two integers '<n_rows> <dim>'") from exc
    if n_rows <= 0 or dim <= 0:
        raise DataError(f"{path}: n_rows and dim must be positive, got {n_rows} {dim}")
    return n_rows, dim


def _require(path, what):
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}: it should contain {what}")


class BigFile:
    """Reader of one BigFile folder; `feature.bin` is memory-mapped read-only.

    Attributes:
        path: the folder.
        n_rows, dim: from shape.txt.
        dim: feature dimension Dv.
    """

    def __init__(self, folder):
        self.path = folder
        self._feature_path = os.path.join(folder, "feature.bin")
        for name, what in (("shape.txt", "'<n_rows> <dim>'"),
                           ("id.txt", "the row ids in row order"),
                           ("feature.bin", "raw float32 rows"),
                           ("video2frames.txt", "a dict literal {video_id: [row id, ...]}")):
            _require(os.path.join(folder, name), what)
        self.n_rows, self.dim = _read_shape(os.path.join(folder, "shape.txt"))
        expected = self.n_rows * self.dim * 4
        actual = os.path.getsize(self._feature_path)
        if actual != expected:
            raise DataError(
                f"{self._feature_path} has {actual} bytes but "
                f"{os.path.join(folder, 'shape.txt')} says {self.n_rows} x {self.dim} float32 "
                f"= {expected} bytes")
        self._index = self._build_index(folder)
        self._memmap = None

    def _build_index(self, folder):
        """Map each video to its rows: a slice when contiguous, else an int64 array."""
        id_path = os.path.join(folder, "id.txt")
        with open(id_path, encoding="utf-8") as f:
            ids = f.read().split()
        if len(ids) != self.n_rows:
            raise DataError(f"{id_path} lists {len(ids)} ids but shape.txt says {self.n_rows} rows")
        id2row = {row_id: i for i, row_id in enumerate(ids)}
        if len(id2row) != len(ids):
            raise DataError(f"{id_path}: {len(ids) - len(id2row)} duplicate row ids")

        v2f_path = os.path.join(folder, "video2frames.txt")
        with open(v2f_path, encoding="utf-8") as f:
            video2frames = parse_video2frames(f.read(), v2f_path)
        counts = np.fromiter((len(v) for v in video2frames.values()), np.int64, len(video2frames))
        total = int(counts.sum())
        rows = np.fromiter((id2row.get(frame, -1) for frames in video2frames.values() for frame in frames),
                           np.int64, total)
        unknown = np.flatnonzero(rows < 0)
        if unknown.size:
            all_frames = [frame for frames in video2frames.values() for frame in frames]
            first = [all_frames[i] for i in unknown[:5]]
            raise DataError(f"{v2f_path}: {unknown.size} frame ids are not in {id_path}, e.g. {first}")

        stops = np.cumsum(counts)
        starts = stops - counts
        # A video is contiguous when each of its rows follows the previous one.
        breaks = np.concatenate([[0], np.cumsum(np.diff(rows) != 1)]) if total else np.zeros(0, np.int64)
        index = {}
        for vid, start, stop in zip(video2frames, starts.tolist(), stops.tolist()):
            if stop > start and breaks[stop - 1] == breaks[start]:
                index[vid] = slice(int(rows[start]), int(rows[start]) + stop - start)
            else:
                index[vid] = rows[start:stop]
        return index

    @property
    def memmap(self):
        """The (n_rows, dim) little-endian float32 memory map, opened on first use."""
        if self._memmap is None:
            self._memmap = np.memmap(self._feature_path, dtype="<f4", mode="r",
                                     shape=(self.n_rows, self.dim))
        return self._memmap

    def __getstate__(self):
        # Never pickle the map itself (numpy would copy all of it).
        state = self.__dict__.copy()
        state["_memmap"] = None
        return state

    def keys(self):
        """Set of the video ids of video2frames.txt."""
        return set(self._index)

    def __contains__(self, video_id):
        return video_id in self._index

    def __len__(self):
        return len(self._index)

    def n_frames(self, video_id):
        """Number of frames listed for `video_id`."""
        idx = self._index[video_id]
        return idx.stop - idx.start if isinstance(idx, slice) else len(idx)

    def read_video(self, video_id):
        """Frames of one video -> float32 ndarray (n_frames, dim), a copy."""
        try:
            idx = self._index[video_id]
        except KeyError:
            raise DataError(f"video {video_id!r} is not in {os.path.join(self.path, 'video2frames.txt')}") from None
        return np.array(self.memmap[idx], dtype=np.float32)

    get = read_video
