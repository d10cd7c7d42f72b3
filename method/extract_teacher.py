"""``python -m method.extract_teacher``: CLIP-like teacher features of a collection (``method.extraction.teacher``)."""
import sys

from method.extraction.teacher import main

if __name__ == "__main__":
    sys.exit(main())
