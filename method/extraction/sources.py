"""Where each video is: video files or frame folders inside the ``--videos`` folders."""
import os
import re

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def natural_key(name):
    """Sort key comparing digit runs as numbers: frame2 < frame10 (same as plain order when zero-padded)."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def list_frame_files(folder):
    """Image files of a frame folder in natural name order."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def find_sources(videos_dir, input_type, wanted_ids):
    """Locate the videos of `wanted_ids` in one `videos_dir`.

    Args:
        videos_dir: folder of video files, or of one frame folder per video.
        input_type: "videos", "frames", or "auto" (whichever of files /
            sub-folders matches more of `wanted_ids`).
        wanted_ids: the video ids of the caption files.
    Returns:
        (input_type, sources, duplicates): the resolved type, dict video_id ->
        path for the ids found, and the ids that several files share as stem
        (the first file in name order is used).
    """
    if not os.path.isdir(videos_dir):
        raise SystemExit(f"--videos {videos_dir}: not a folder")
    files, dirs, duplicates = {}, {}, []
    for entry in sorted(os.scandir(videos_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            dirs[entry.name] = entry.path
        elif entry.is_file():
            stem = os.path.splitext(entry.name)[0]
            if stem in files:
                duplicates.append(stem)
            else:
                files[stem] = entry.path
    if input_type == "auto":
        n_dirs = sum(vid in dirs for vid in wanted_ids)
        n_files = sum(vid in files for vid in wanted_ids)
        input_type = "frames" if n_dirs > n_files else "videos"
    found = dirs if input_type == "frames" else files
    sources = {vid: found[vid] for vid in wanted_ids if vid in found}
    return input_type, sources, sorted(set(duplicates) & set(sources))


def locate_videos(folders, input_type, wanted_ids):
    """Locate `wanted_ids` in several folders, searched in order (the first folder holding a video wins).

    Prints one line per folder and the videos found more than once.

    Returns:
        dict video_id -> (input_type, path) for the ids found.
    """
    sources, duplicates = {}, []
    for folder in folders:
        kind, found, dups = find_sources(folder, input_type, wanted_ids)
        print(f"--videos {folder}: reading {kind}; {len(found)} of the {len(wanted_ids)} caption videos found")
        duplicates += dups + [vid for vid in found if vid in sources]
        for vid, path in found.items():
            sources.setdefault(vid, (kind, path))
    if duplicates:
        print_list("videos found more than once (the first folder, then the first file in name order, is used)",
                   sorted(set(duplicates)))
    return sources


def print_list(title, items, limit=20):
    """Print a count and the first `limit` items."""
    print(f"{title}: {len(items)}")
    for item in items[:limit]:
        print(f"  {item}")
    if len(items) > limit:
        print(f"  ... and {len(items) - limit} more")
