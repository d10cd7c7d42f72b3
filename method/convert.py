"""``python -m method.convert``: student frames between the BigFile folder and a per-video HDF5 file (``method.extraction.convert``)."""
import sys

from method.extraction.convert import main

if __name__ == "__main__":
    sys.exit(main())
