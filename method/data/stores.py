"""Feature stores (HDF5 and BigFile) and the lookup of caption keys in them."""
import os

import h5py
import numpy as np

from method.data.bigfile import BigFile, DataError
from method.data.paths import require_file
from method.data.transforms import align_frames, teacher_sentence

N_SHOWN = 5  # missing keys quoted in an error message


class H5Store:
    """Read-only HDF5 feature store, key -> float32 array.

    The file is opened lazily in each process (the pid is remembered), so an
    h5py handle is never shared between forked DataLoader workers.
    """

    def __init__(self, path, what="an HDF5 file of features, key -> float32 array"):
        require_file(path, what)
        self.path = path
        self._file = None
        self._pid = None
        self._keys = None

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = state["_pid"] = None
        return state

    def keys(self):
        """Set of all keys (cached)."""
        if self._keys is None:
            self._keys = set(self._handle().keys())
        return self._keys

    def __contains__(self, key):
        return key in self.keys()

    def get(self, key):
        """Array stored under `key` as float32 ndarray."""
        try:
            data = self._handle()[key]
        except KeyError:
            raise DataError(f"{self.path}: no key {key!r}") from None
        return np.asarray(data[()], dtype=np.float32)

    def n_frames(self, key):
        """Length of the array stored under `key` (its first dimension), read without the data."""
        try:
            return int(self._handle()[key].shape[0])
        except KeyError:
            raise DataError(f"{self.path}: no key {key!r}") from None

    @property
    def dim(self):
        """Last dimension of the first stored array (the feature size)."""
        handle = self._handle()
        first = next(iter(handle), None)
        if first is None:
            raise DataError(f"{self.path}: the file holds no features")
        return int(handle[first].shape[-1])


def open_video_store(paths):
    """Student frame store: the BigFile folder if present, else the HDF5 file."""
    if os.path.isdir(paths.video_bigfile):
        return BigFile(paths.video_bigfile)
    if os.path.isfile(paths.video_hdf5):
        return H5Store(paths.video_hdf5)
    raise DataError(
        f"missing student frame features: neither the BigFile folder {paths.video_bigfile} "
        f"(feature.bin, shape.txt, id.txt, video2frames.txt) nor the HDF5 file {paths.video_hdf5} "
        f"(video_id -> (n_frames, dim)) exists")


def caption_key_candidates(cap_id):
    """Keys under which a caption may be stored: itself, then its other form.

    `<vid>#enc#<n>` also tries `<vid>#<n>`; `<vid>#<n>` also tries `<vid>#enc#<n>`.
    """
    if "#enc#" in cap_id:
        return [cap_id, cap_id.replace("#enc#", "#")]
    vid, sep, num = cap_id.rpartition("#")
    if sep and num.isdigit():
        return [cap_id, f"{vid}#enc#{num}"]
    return [cap_id]


def resolve_caption_keys(cap_ids, store):
    """Find each caption's key in `store` once.

    Returns:
        (dict cap_id -> key, list of cap_ids with no key, in input order)
    """
    keys = store.keys()
    mapping, missing = {}, []
    for cap_id in cap_ids:
        key = next((k for k in caption_key_candidates(cap_id) if k in keys), None)
        if key is None:
            missing.append(cap_id)
        else:
            mapping[cap_id] = key
    return mapping, missing


def missing_message(path, missing, total, kind, content):
    shown = ", ".join(repr(k) for k in missing[:N_SHOWN])
    return (f"{path}: no {content} for {len(missing)} of {total} {kind}; "
            f"first missing: {shown}")


def resolve_or_raise(cap_ids, store, content):
    mapping, missing = resolve_caption_keys(cap_ids, store)
    if missing:
        raise DataError(missing_message(store.path, missing, len(cap_ids), "captions", content))
    return mapping



class TeacherFrames:
    """Several teachers' frame stores seen as one: video_id -> (n, sum of dims) float32.

    Each teacher after the first is resampled onto the first teacher's frames
    (``align_frames``; teachers extracted on one time grid have equal counts and
    are not resampled), then the features are concatenated; ``dims`` splits
    them again (``method.models.teacher.PrecomputedTeacher``).
    """

    def __init__(self, stores):
        self.stores = list(stores)
        self.path = " + ".join(s.path for s in self.stores)

    @property
    def dims(self):
        return [s.dim for s in self.stores]

    @property
    def dim(self):
        return sum(self.dims)

    def keys(self):
        keys = set(self.stores[0].keys())
        for s in self.stores[1:]:
            keys &= s.keys()
        return keys

    def __contains__(self, key):
        return all(key in s for s in self.stores)

    def n_frames(self, key):
        return self.stores[0].n_frames(key)

    def get(self, key):
        first = self.stores[0].get(key)
        return np.concatenate([first] + [align_frames(s.get(key), len(first)) for s in self.stores[1:]], axis=-1)


class TeacherSentences:
    """Several teachers' sentence stores seen as one: caption key -> (sum of dims,) float32.

    A caption is looked up in each store under either id form (``caption_key_candidates``).
    """

    def __init__(self, stores):
        self.stores = list(stores)
        self.path = " + ".join(s.path for s in self.stores)

    @property
    def dim(self):
        return sum(s.dim for s in self.stores)

    def keys(self):
        return set().union(*(s.keys() for s in self.stores))

    def __contains__(self, key):
        return any(key in s for s in self.stores)

    def get(self, key):
        parts = []
        for s in self.stores:
            own = next((k for k in caption_key_candidates(key) if k in s.keys()), key)
            parts.append(teacher_sentence(s.get(own), s.path))
        return np.concatenate(parts)
