"""Caption features: encode the captions not yet written, in batches, one entry per caption."""
from tqdm import tqdm


def encode_captions(writer, todo, captions, encode, batch_size, desc):
    """Encode the caption ids `todo` and write each under its id; the file is flushed after every batch.

    Args:
        writer: an open H5Writer.
        todo: cap_ids, in the order to encode them.
        captions: dict cap_id -> text.
        encode: list of n texts -> n arrays (one entry each).
        batch_size: captions per call of `encode`.
        desc: label of the progress bar.
    """
    with tqdm(total=len(todo), desc=desc, unit="caption") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            for cap_id, feat in zip(batch, encode([captions[c] for c in batch])):
                writer.add(cap_id, feat)
            writer.flush()
            bar.update(len(batch))
