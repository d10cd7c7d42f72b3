"""Writers of small datasets in the released on-disk layout, shared by the tests."""
import os

import h5py
import numpy as np

DV, DQ, DT = 6, 5, 4  # student frame, token and teacher dims of the tiny datasets


def write_bigfile(folder, video_frames, rng, quote="'", shuffle_rows=False, dim=DV, values=None):
    """Write a BigFile folder; returns {vid: expected (n, D) float32 frames}.

    With shuffle_rows the rows are stored in a random order, so the frames of
    a video are non-contiguous rows. ``values`` (rows in video order) replaces
    the random frames.
    """
    os.makedirs(folder, exist_ok=True)
    frame_ids = [(vid, f"{vid}_f{i}") for vid, n in video_frames.items() for i in range(n)]
    if values is None:
        values = rng.standard_normal((len(frame_ids), dim)).astype(np.float32)
    dim = values.shape[1]
    order = rng.permutation(len(frame_ids)) if shuffle_rows else np.arange(len(frame_ids))
    values[order].astype("<f4").tofile(os.path.join(folder, "feature.bin"))
    with open(os.path.join(folder, "shape.txt"), "w") as f:
        f.write(f"{len(frame_ids)} {dim}\n")
    with open(os.path.join(folder, "id.txt"), "w") as f:
        f.write("\n".join(frame_ids[i][1] for i in order))
    v2f = {vid: [fid for v, fid in frame_ids if v == vid] for vid in video_frames}
    body = ",\n ".join(f"{quote}{vid}{quote}: [" + ", ".join(f"{quote}{x}{quote}" for x in fids) + "]"
                       for vid, fids in v2f.items())
    with open(os.path.join(folder, "video2frames.txt"), "w") as f:
        f.write("{" + body + "}\n")
    expected, start = {}, 0
    for vid, n in video_frames.items():
        expected[vid] = values[start:start + n]
        start += n
    return expected


def write_h5(path, mapping):
    with h5py.File(path, "w") as f:
        for key, value in mapping.items():
            f.create_dataset(key, data=value)


def write_collection(root, collection="tvr", visual_feature="i3d_resnet", bigfile=True, seed=0,
                     n_videos=7, clip_other_form=True, dims=(DV, DQ, DT), enc_ids=True):
    """Small dataset in the released layout; returns the raw arrays written.

    Captions use `<vid>#enc#<n>` ids (`<vid>#<n>` without enc_ids, as Charades
    and ActivityNet); with clip_other_form the CLIP query file keys every second
    caption in the other form. Every third CLIP sentence is stored (1, Dt),
    the others (Dt,). ``dims`` = (student frame, token, teacher) sizes.
    """
    dv, dq, dt = dims
    rng = np.random.default_rng(seed)
    base = os.path.join(root, collection)
    text_dir, feat_dir = os.path.join(base, "TextData"), os.path.join(base, "FeatureData")
    os.makedirs(text_dir)
    os.makedirs(feat_dir)
    n_frames = {f"vid{v}": int(n) for v, n in enumerate(rng.integers(3, 300, n_videos))}
    n_frames["vid0"] = 200  # pooled to 128
    if bigfile:
        frames = write_bigfile(os.path.join(feat_dir, visual_feature), n_frames, rng, shuffle_rows=True, dim=dv)
    else:
        frames = {vid: rng.standard_normal((n, dv)).astype(np.float32) for vid, n in n_frames.items()}
        write_h5(os.path.join(feat_dir, f"{visual_feature}.hdf5"), frames)
    teacher = {vid: rng.standard_normal((max(1, n + int(rng.integers(-40, 40))), dt)).astype(np.float32)
               for vid, n in n_frames.items()}
    write_h5(os.path.join(feat_dir, f"new_clip_vit_32_{collection}_vid_features.hdf5"), teacher)
    tokens, sentences, clip_file, lines = {}, {}, {}, []
    for v, vid in enumerate(n_frames):
        for j in range(1 + (v * 2) % 5):
            cap_id, other = (f"{vid}#enc#{j}", f"{vid}#{j}") if enc_ids else (f"{vid}#{j}", f"{vid}#enc#{j}")
            lines.append(f"{cap_id} caption {j} of {vid}")
            tokens[cap_id] = rng.standard_normal((int(rng.integers(2, 40)), dq)).astype(np.float32)
            sentences[cap_id] = rng.standard_normal(dt).astype(np.float32)
            key = other if clip_other_form and j % 2 else cap_id
            clip_file[key] = sentences[cap_id][None] if j % 3 == 0 else sentences[cap_id]
    write_h5(os.path.join(text_dir, f"roberta_{collection}_query_feat.hdf5"), tokens)
    write_h5(os.path.join(text_dir, f"clip_ViT_B_32_{collection}_query_feat.hdf5"), clip_file)
    for split in ("train", "val", "test"):
        with open(os.path.join(text_dir, f"{collection}{split}.caption.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return {"frames": frames, "teacher": teacher, "tokens": tokens, "sentences": sentences, "lines": lines}


def read_tree(root):
    """{path relative to root: bytes} of every file under `root`."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out
