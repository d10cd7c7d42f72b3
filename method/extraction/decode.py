"""Decoding: a video file (any container FFmpeg reads, via PyAV) or a frame folder, as PIL images.

A source is read in two passes. `timeline()` gives the frames' presentation
times and the duration (for a video file from the packets' timestamps, which
needs no decoding); `frames(wanted)` then decodes once, in presentation order,
and converts only the wanted frames to RGB images, so memory holds only what
the caller keeps.

What counts as a video that cannot be read is decided here, and only here: a
`DecodeError` is raised for a source with no video stream, no frame or no
image file, and for the errors of reading one (`read_errors`: PyAV's
FFmpegError, OSError such as a missing or unreadable file or PIL's
UnidentifiedImageError and truncated images, EOFError, PIL's
DecompressionBombError). The extractors record such a video as failed and go
on; any other exception (a bug, an API change of a dependency) stops them.
"""
import numpy as np

from method.extraction.deps import import_optional
from method.extraction.sources import list_frame_files


class DecodeError(Exception):
    """A video (file or frame folder) that cannot be read; the message says why (the original error is its cause)."""


def read_errors(kind):
    """The exception types of reading a source of `kind` ("videos" or "frames") that make it a DecodeError."""
    if kind == "videos":
        return import_optional("av").error.FFmpegError, OSError, EOFError
    return OSError, EOFError, import_optional("PIL.Image").DecompressionBombError


def _as_decode_error(exc):
    return DecodeError(f"{type(exc).__name__}: {exc}")


def _guarded(iterator, errors):
    """`iterator`'s values; its `errors` become DecodeError."""
    try:
        yield from iterator
    except errors as exc:
        raise _as_decode_error(exc) from exc


class FrameSource:
    """One video: ``kind`` "videos" (a video file) or "frames" (a folder of frame images).

    A frame folder is taken to run at `frames_fps`: frame i is shown at
    i / frames_fps and the folder lasts n_frames / frames_fps seconds.
    """

    def __init__(self, kind, path, frames_fps):
        if kind not in ("videos", "frames"):
            raise ValueError(f"unknown source kind {kind!r}")
        self.kind, self.path, self.frames_fps = kind, path, frames_fps
        self._files = None

    def _frame_files(self):
        if self._files is None:
            self._files = list_frame_files(self.path)
            if not self._files:
                raise DecodeError("no image files in the frame folder")
        return self._files

    def timeline(self):
        """(timestamps float64 (T,), duration in seconds); raises DecodeError when the source cannot be read."""
        try:
            if self.kind == "frames":
                n = len(self._frame_files())
                return np.arange(n) / self.frames_fps, n / self.frames_fps
            return video_timeline(self.path)
        except read_errors(self.kind) as exc:
            raise _as_decode_error(exc) from exc

    def frames(self, wanted):
        """Yield (index, RGB PIL image) for each index of `wanted` (sorted, unique), in order.

        Indices past the last frame that actually decodes repeat that frame (a
        damaged tail); a source with no decodable frame, or whose reading fails,
        raises DecodeError (while iterating).
        """
        wanted = [int(i) for i in wanted]
        if self.kind == "frames":
            return _guarded(_folder_frames(self, wanted), read_errors(self.kind))
        return _guarded(_video_frames(self.path, wanted), read_errors(self.kind))


def video_timeline(path):
    """Presentation times (relative to the first frame) and duration of a video file's first video stream.

    Times come from the packets' pts and the stream's time base, sorted (B-frames
    arrive out of order); the duration adds one frame duration (from the average
    frame rate, else the median frame step) to the last time. Where packets carry
    no pts, the frames are decoded to get their times instead.
    """
    av = import_optional("av")
    with av.open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        pts = [packet.pts for packet in container.demux(stream) if packet.size]
        time_base, rate = stream.time_base, stream.average_rate
    if pts and None not in pts and time_base is not None:
        times = np.sort(np.asarray(pts, dtype=np.float64))
        times = (times - times[0]) * float(time_base)
    else:
        times = _decoded_times(path, rate)
    if rate:
        frame_dur = 1.0 / float(rate)
    else:
        steps = np.diff(times)
        frame_dur = float(np.median(steps)) if steps.size else 0.0
    return times, float(times[-1] + frame_dur)


def _decoded_times(path, rate):
    """Frame times by decoding: the frames' pts, else their index over the average frame rate."""
    av = import_optional("av")
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [(frame.pts, frame.time) for frame in container.decode(stream)]
    if not frames:
        raise DecodeError("no frames decoded")
    if all(t is not None for _, t in frames):
        times = np.asarray([t for _, t in frames], dtype=np.float64)
        return np.maximum.accumulate(times - times[0])
    if not rate:
        raise DecodeError("frames carry no timestamps and the stream no frame rate")
    return np.arange(len(frames)) / float(rate)


def _video_frames(path, wanted):
    """Decode a video file once; yield (index, image) for the `wanted` presentation-order indices."""
    av = import_optional("av")
    pos, previous = 0, None
    with av.open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            previous = frame
            if pos < len(wanted) and i == wanted[pos]:
                yield i, frame.to_image()
                pos += 1
            if pos == len(wanted):
                return
    if previous is None:
        raise DecodeError("no frames decoded")
    last = previous.to_image()
    for i in wanted[pos:]:
        yield i, last


def _folder_frames(source, wanted):
    """Yield (index, image) for the `wanted` indices of a frame folder's files."""
    image_mod = import_optional("PIL.Image")
    files = source._frame_files()
    for i in wanted:
        with image_mod.open(files[min(i, len(files) - 1)]) as img:
            yield i, img.convert("RGB")


def load_frames(path, input_type, sampler, frames_fps):
    """Decode the sampled frames of one video.

    Args:
        path: video file, or frame folder.
        input_type: "videos" or "frames".
        sampler: callable(timestamps, duration) -> frame indices.
        frames_fps: native rate of a frame folder (see FrameSource).
    Returns:
        list of RGB PIL images, one per sampled index (repeats included).
    Raises:
        DecodeError when the video cannot be read (the caller records it as failed); any other
        exception is a bug and stops the caller.
    """
    source = FrameSource(input_type, path, frames_fps)
    indices = sampler(*source.timeline())
    images = dict(source.frames(np.unique(indices)))
    return [images[int(i)] for i in indices]
