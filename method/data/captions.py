"""Caption files: one `<cap_id> <caption text>` a line."""
from dataclasses import dataclass

from method.data.bigfile import DataError
from method.data.paths import require_file


@dataclass
class Captions:
    """Content of one `<collection><split>.caption.txt`.

    Attributes:
        path: the caption file.
        cap_ids: caption ids in file order.
        captions: cap_id -> caption text.
        video_ids: ordered set of `cap_id.split('#')[0]`, first-appearance order.
        video2caps: video_id -> its cap_ids in file order.
    """

    path: str
    cap_ids: list
    captions: dict
    video_ids: list
    video2caps: dict

    def __len__(self):
        return len(self.cap_ids)



def read_caption_file(path):
    """Read a caption file, one `<cap_id> <caption text>` a line (blank lines skipped).

    Returns:
        Captions. Raises DataError on a malformed line or a repeated cap_id.
    """
    require_file(path, "one caption a line, '<cap_id> <caption text>'")
    cap_ids, captions, video2caps = [], {}, {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise DataError(f"{path}, line {line_no}: expected '<cap_id> <caption text>', got {line[:80]!r}")
            cap_id, text = parts
            if cap_id in captions:
                raise DataError(f"{path}, line {line_no}: caption id {cap_id!r} appears twice")
            cap_ids.append(cap_id)
            captions[cap_id] = text
            video2caps.setdefault(cap_id.split("#")[0], []).append(cap_id)
    return Captions(path, cap_ids, captions, list(video2caps), video2caps)

