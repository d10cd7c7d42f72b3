"""``python -m method.prepare``: every feature of a new collection from raw videos and captions (``method.extraction.prepare``)."""
import sys

from method.extraction.prepare import main

if __name__ == "__main__":
    sys.exit(main())
