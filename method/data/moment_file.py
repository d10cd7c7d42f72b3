"""The ground-truth moments file: where in its video each caption's moment lies.

Used by the moment evaluation of ``method.analysis.explore`` and ``method.analysis.report``;
``method.data.demo`` writes one for the demo data. Default location:
``<root_path>/<collection>/TextData/<collection>_moments.txt``. Plain text, one
caption a line, fields separated by whitespace, ``#`` starting a comment line::

    <cap_id> <start> <end>              frames:  [start, end) in the video's stored feature
                                                 frames (before pooling to max_ctx_l; may be fractional)
    <cap_id> <start> <end> <duration>   seconds: [start, end] in a video of <duration> seconds

A file may cover several splits and need not cover every caption. Both forms
become fractions of the video's length, the time axis on which moments are
compared (``moment_fractions``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from method.data import DataError

N_SHOWN = 5  # unknown ids quoted in an error message


@dataclass(frozen=True)
class Moment:
    """One ground-truth moment: [start, end) in frames (``duration`` None) or seconds."""

    start: float
    end: float
    duration: float | None
    line: int  # line number in the file, for error messages


def moments_path(root_path: str, collection: str) -> str:
    """Default moments file of a collection."""
    return os.path.join(root_path, collection, "TextData", f"{collection}_moments.txt")


def read_moments(path: str) -> dict[str, Moment]:
    """Parse a moments file -> {cap_id: Moment}; DataError naming file and line on bad input."""
    if not os.path.isfile(path):
        raise DataError(f"moments file not found: {path} (one '<cap_id> <start> <end> [<duration>]' a line)")
    out: dict[str, Moment] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{path}, line {line_no}"
            if len(fields) not in (3, 4):
                raise DataError(f"{where}: expected '<cap_id> <start> <end> [<duration>]', got {line.strip()[:80]!r}")
            try:
                values = [float(x) for x in fields[1:]]
            except ValueError:
                raise DataError(f"{where}: start, end and duration must be numbers, got {fields[1:]}") from None
            start, end, duration = values[0], values[1], values[2] if len(values) == 3 else None
            if not 0 <= start < end:
                raise DataError(f"{where}: a moment needs 0 <= start < end, got start {start:g}, end {end:g}")
            if duration is not None and end > duration:
                raise DataError(f"{where}: end {end:g} s lies beyond the video's duration {duration:g} s")
            if fields[0] in out:
                raise DataError(f"{where}: caption {fields[0]!r} already has a moment (line {out[fields[0]].line})")
            out[fields[0]] = Moment(start, end, duration, line_no)
    return out


def write_moments(path: str, moments: dict, comment: str = "") -> None:
    """Write {cap_id: (start, end) in frames | (start, end, duration) in seconds} in the file format."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("# <cap_id> <start> <end> [<duration>]: frames [start, end), or seconds with the duration\n")
        if comment:
            f.write(f"# {comment}\n")
        f.writelines(f"{cap_id} {' '.join(f'{v:g}' for v in span)}\n" for cap_id, span in moments.items())


def check_known(moments: dict[str, Moment], known_cap_ids, path: str) -> None:
    """Every cap_id of the file must be a caption of the collection (any split)."""
    known = set(known_cap_ids)
    unknown = [c for c in moments if c not in known]
    if unknown:
        shown = ", ".join(f"{c!r} (line {moments[c].line})" for c in unknown[:N_SHOWN])
        raise DataError(f"{path}: {len(unknown)} of {len(moments)} cap_ids are no caption of the collection; "
                        f"first: {shown}")


def moment_fractions(moments: dict[str, Moment], cap_ids: list[str], n_frames: np.ndarray,
                     path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth of Q captions as fractions of their video's length.

    ``n_frames`` (Q,): stored feature frames of each caption's video (frame
    moments are divided by it). Returns (start (Q,), end (Q,), known (Q,) bool);
    start / end are NaN where the caption has no moment. A frame moment ending
    beyond its video raises DataError naming the file and line.
    """
    rows = [moments.get(c) for c in cap_ids]
    known = np.array([m is not None for m in rows], dtype=bool)
    span = np.array([(m.start, m.end, np.nan if m.duration is None else m.duration) if m else (np.nan,) * 3
                     for m in rows], dtype=np.float64).reshape(-1, 3)
    length = np.where(np.isnan(span[:, 2]), np.asarray(n_frames, dtype=np.float64), span[:, 2])
    beyond = known & (span[:, 1] > length + 1e-6)
    if beyond.any():
        i = int(np.flatnonzero(beyond)[0])
        raise DataError(f"{path}, line {rows[i].line}: moment of {cap_ids[i]!r} ends at frame {span[i, 1]:g}, "
                        f"but its video has {int(length[i])} frames")
    return span[:, 0] / length, span[:, 1] / length, known
