"""Resumable, atomic writers of the feature files training reads.

- `H5Writer`: key -> float32 array in an HDF5 file. Entries go to
  ``<file>.partial`` and the file gets its real name only when the run ends
  normally, so a reader of the real name never sees an unfinished file. A
  resumed run appends to the partial file, or moves a finished file back to its
  partial name while it adds entries.
- `BigFileWriter`: the student's BigFile folder. Each finished video is staged
  in ``<folder>.partial/staging/``; `finish()` assembles the folder (the videos
  already in ``<folder>/`` plus the staged ones) in ``<folder>.partial/build/``
  and swaps it in. ``<folder>/`` is whole at every moment it exists.
- `write_bigfile`: a BigFile folder from a stream of videos (memory: one video).

Each file records how its entries were made (JSON settings). Resuming with
other settings is refused for the `strict` keys (rows of different samplings
would mix) and only warned about for the others (the same model may sit at
another path); a feature size that differs from the file's is refused.
"""
import json
import os
import shutil
from urllib.parse import quote, unquote

import h5py
import numpy as np

from method.data.bigfile import BigFile, parse_video2frames

SETTINGS_FILE = "prepare_settings.json"  # in a BigFile folder, beside the four files training reads


def check_settings(path, recorded, settings, strict, hint):
    """Compare the `recorded` settings of an existing output with this run's.

    Raises SystemExit on a difference in a `strict` key; prints a warning for the others.
    """
    for key, value in settings.items():
        old = recorded.get(key)
        if old == value or (old is None and key not in strict):
            continue
        if key in strict:
            raise SystemExit(f"{path} was made with {key} {old!r}, this run uses {value!r}: pass the same "
                             f"{key} flags, {hint}, or delete it")
        print(f"warning: {path} was made with {key} {old!r}, this run uses {value!r}")


def write_text_atomic(path, text):
    """Write a text file under a temporary name, then rename it into place."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _open_h5(path, mode):
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise SystemExit(f"{path}: cannot be opened ({exc}); if it is the unfinished output of an interrupted "
                         f"run, delete it to make that file again") from exc


def h5_keys(path):
    """Keys written to the HDF5 output `path` so far (its partial file while unfinished); empty if none."""
    for candidate in (path + ".partial", path):
        if os.path.isfile(candidate):
            with _open_h5(candidate, "r") as f:
                return set(f.keys())
    return set()


class H5Writer:
    """Context manager writing key -> float32 array entries to the HDF5 file `path`.

    Args:
        path: the final file name.
        settings: dict recorded as JSON in the file attribute `attr`.
        attr: name of that attribute.
        strict: keys of `settings` that must equal the recorded ones.
        hint: the flag that gives another output name (for the error message).
    """

    def __init__(self, path, settings, attr, strict=(), hint="another output name"):
        self.path, self.partial = path, path + ".partial"
        self.settings, self.attr, self.strict, self.hint = settings, attr, strict, hint
        self.file, self.dim = None, None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.isfile(self.path) and os.path.isfile(self.partial):
            raise SystemExit(f"both {self.path} and {self.partial} exist: delete the one not to keep")
        source = self.partial if os.path.isfile(self.partial) else self.path if os.path.isfile(self.path) else None
        if source is not None:
            with _open_h5(source, "r") as f:
                recorded = f.attrs.get(self.attr)
                if recorded is not None:
                    check_settings(self.path, json.loads(recorded), self.settings, self.strict, self.hint)
            if source == self.path:
                os.replace(self.path, self.partial)
        self.file = _open_h5(self.partial, "a")
        if self.attr not in self.file.attrs:
            if len(self.file):
                print(f"note: {self.path} has {len(self.file)} entries but no record of how they were made "
                      f"(e.g. a released file); new entries are added with {self.settings}")
            else:
                self.file.attrs[self.attr] = json.dumps(self.settings, sort_keys=True)
        first = next(iter(self.file), None)
        self.dim = None if first is None else self.file[first].shape[-1]
        return self

    def add(self, key, array):
        """Write one entry (float32), checking its feature size against the file's."""
        array = np.asarray(array, dtype=np.float32)
        if self.dim is None:
            self.dim = array.shape[-1]
        elif array.shape[-1] != self.dim:
            raise SystemExit(f"{self.path}: {key!r} has {array.shape[-1]}-d features, the file holds "
                             f"{self.dim}-d ones (another model?): write to another file or delete it")
        self.file.create_dataset(key, data=array)

    def flush(self):
        self.file.flush()

    def __exit__(self, exc_type, exc, tb):
        self.file.close()
        if exc_type is None:
            os.replace(self.partial, self.path)
        return False


def write_bigfile(folder, videos):
    """Write a BigFile folder (feature.bin, shape.txt, id.txt, video2frames.txt) from a stream of videos.

    Args:
        folder: a folder that does not exist yet.
        videos: iterable of (video_id, frames (n, d) float array, row_ids or None);
            row_ids default to ``<video_id>_<i>``. Rows are laid out video after video.
    Returns:
        (n_rows, dim).
    """
    os.makedirs(folder)
    n_rows, dim, seen = 0, None, set()
    with open(os.path.join(folder, "feature.bin"), "wb") as fbin, \
            open(os.path.join(folder, "id.txt"), "w", encoding="utf-8") as fids, \
            open(os.path.join(folder, "video2frames.txt"), "w", encoding="utf-8") as fv2f:
        fv2f.write("{")
        for k, (video_id, frames, row_ids) in enumerate(videos):
            frames = np.asarray(frames, dtype="<f4")
            if frames.ndim != 2 or not len(frames):
                raise ValueError(f"{video_id!r}: expected frames (n >= 1, d), got shape {frames.shape}")
            if dim is None:
                dim = frames.shape[1]
            elif frames.shape[1] != dim:
                raise SystemExit(f"{folder}: {video_id!r} has {frames.shape[1]}-d frames, the videos before it "
                                 f"{dim}-d")
            row_ids = list(row_ids) if row_ids is not None else [f"{video_id}_{i}" for i in range(len(frames))]
            if len(row_ids) != len(frames) or seen.intersection(row_ids):
                raise SystemExit(f"{folder}: the row ids of {video_id!r} are not one new id per frame")
            seen.update(row_ids)
            fbin.write(np.ascontiguousarray(frames).tobytes())
            fids.write((" " if n_rows else "") + " ".join(row_ids))
            fv2f.write((", " if k else "") + f"{video_id!r}: {row_ids!r}")
            n_rows += len(frames)
        fv2f.write("}")
    if not n_rows:
        shutil.rmtree(folder)
        raise SystemExit(f"{folder}: no videos to write")
    with open(os.path.join(folder, "shape.txt"), "w", encoding="utf-8") as f:
        f.write(f"{n_rows} {dim}")
    return n_rows, dim


def read_video2frames(folder):
    """video2frames.txt of a BigFile folder -> dict video_id -> row ids (empty when there is no folder)."""
    path = os.path.join(folder, "video2frames.txt")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return parse_video2frames(f.read(), path)


class BigFileWriter:
    """Resumable, atomic writer of the BigFile folder `folder` (see the module docstring).

    Args:
        folder: the final folder, e.g. FeatureData/<visual_feature>.
        settings, strict, hint: as for H5Writer (recorded in SETTINGS_FILE).
    """

    def __init__(self, folder, settings, strict=(), hint="another output name"):
        self.folder, self.partial, self.old = folder, folder + ".partial", folder + ".old"
        self.staging = os.path.join(self.partial, "staging")
        self.settings, self.dim = settings, None
        self._recover()
        for where in (self.folder, self.partial):
            path = os.path.join(where, SETTINGS_FILE)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    check_settings(where, json.load(f), settings, strict, hint)
            elif os.path.isdir(where) and where == self.folder:
                print(f"note: {where} exists without {SETTINGS_FILE} (e.g. released features); "
                      f"new videos are added with {settings}")

    def _recover(self):
        """Finish or undo a swap that an interrupted finish() left half done."""
        if not os.path.isdir(self.old):
            return
        if os.path.isdir(self.folder):  # the new folder is in place: the old one and the staging are obsolete
            shutil.rmtree(self.partial, ignore_errors=True)
            shutil.rmtree(self.old)
        else:
            os.replace(self.old, self.folder)

    def _staged(self):
        """dict video_id -> staged .npy path."""
        if not os.path.isdir(self.staging):
            return {}
        return {unquote(name[:-4]): os.path.join(self.staging, name)
                for name in os.listdir(self.staging) if name.endswith(".npy")}

    def done(self):
        """Video ids written so far: in the finished folder or staged."""
        return set(read_video2frames(self.folder)) | set(self._staged())

    def _written_dim(self):
        """Feature size of the finished folder or of a staged video; None before the first video."""
        shape = os.path.join(self.folder, "shape.txt")
        if os.path.isfile(shape):
            with open(shape, encoding="utf-8") as f:
                return int(f.read().split()[1])
        staged = next(iter(self._staged().values()), None)
        return None if staged is None else np.load(staged, mmap_mode="r").shape[1]

    def add(self, video_id, frames):
        """Stage one video's frames (n, d), written whole under a temporary name and renamed."""
        if self.dim is None:
            self.dim = self._written_dim() or frames.shape[1]
        if frames.shape[1] != self.dim:
            raise SystemExit(f"{self.folder}: {video_id!r} has {frames.shape[1]}-d frames, the folder holds "
                             f"{self.dim}-d ones (other models?): choose another --visual_feature")
        if not os.path.isdir(self.staging):
            os.makedirs(self.staging)
            write_text_atomic(os.path.join(self.partial, SETTINGS_FILE), json.dumps(self.settings, sort_keys=True))
        path = os.path.join(self.staging, quote(video_id, safe="") + ".npy")
        with open(path + ".tmp", "wb") as f:
            np.save(f, np.asarray(frames, dtype="<f4"))
        os.replace(path + ".tmp", path)

    def finish(self, order):
        """Assemble the folder from its videos and the staged ones and swap it in.

        Videos are laid out in `order` (video ids), then any others in name order.
        Returns:
            False when nothing was staged (the folder is left as it is), else True.
        """
        staged = self._staged()
        if not staged:
            shutil.rmtree(self.partial, ignore_errors=True)
            return False
        previous = read_video2frames(self.folder)
        store = BigFile(self.folder) if previous else None
        available = set(staged) | set(previous)
        ids = [vid for vid in dict.fromkeys(order) if vid in available]
        ids += sorted(available - set(ids))

        def videos():
            for vid in ids:
                if vid in staged:
                    yield vid, np.load(staged[vid], mmap_mode="r"), None
                else:
                    yield vid, store.read_video(vid), previous[vid]

        build = os.path.join(self.partial, "build")
        shutil.rmtree(build, ignore_errors=True)
        write_bigfile(build, videos())
        write_text_atomic(os.path.join(build, SETTINGS_FILE), json.dumps(self.settings, sort_keys=True))
        if os.path.isdir(self.folder):
            os.replace(self.folder, self.old)
        os.replace(build, self.folder)
        shutil.rmtree(self.partial)
        shutil.rmtree(self.old, ignore_errors=True)
        return True
