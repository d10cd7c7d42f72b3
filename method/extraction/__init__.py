"""Feature extraction from raw videos and captions (optional dependencies: requirements-extract.txt).

Modules, each with one job; imports point down (nothing here imports training code):

| module | job |
|---|---|
| `deps` | import of the optional packages (transformers, av, PIL) with the install hint |
| `cli` | the help formatter of the commands |
| `sampling` | frame indices: fixed rate, centres of student clips, the clip time grid |
| `sources` | where each video is: video files or frame folders in the ``--videos`` folders |
| `decode` | PyAV decoding and frame folders: timelines and the sampled frames as PIL images; `DecodeError`, the only error that makes a failed (skipped) video |
| `prefetch` | decoding ahead in worker threads, streamed with bounded memory |
| `encoders` | Hugging Face image, video, token and CLIP-like dual encoders (batched, device, autocast) |
| `writers` | resumable, atomic HDF5 and BigFile writers |
| `captions` | caption files: the released ones, or one file plus a split rule |
| `text` | caption features of the captions not yet written |
| `clips` | one video's sampled frames grouped into chunks of clips, per encoder (`Part`) |
| `visual` | the video stage of prepare: every part of a video from one decode |
| `teacher` | ``python -m method.extract_teacher``: CLIP teacher files from raw videos |

``python -m method.prepare`` (all features of a new collection) and
``python -m method.convert`` (BigFile <-> HDF5) are built on them.
Importing this package, or any module of it, imports none of the optional packages.
"""
