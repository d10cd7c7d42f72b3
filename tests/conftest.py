"""Fixtures shared by the tests."""
from pathlib import Path

import numpy as np
import pytest
from synthetic import write_collection

# The authors' numbers ship with the repository (tests/golden/, described by its README.md):
# a fresh clone runs every golden test, and a missing file is a failure, not a skip.
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN = GOLDEN_DIR / "released_code_golden.npz"
DLDKDPP_GOLDEN = GOLDEN_DIR / "dldkdpp_golden.npz"
GMMFORMER_GOLDEN = GOLDEN_DIR / "gmmformer_golden.npz"
KEYS_TSV = GOLDEN_DIR / "released_checkpoint_keys_tvr.tsv"


def golden_file(path: Path) -> Path:
    """``path`` if it exists; otherwise the test fails, naming the file (the golden files are part of the repository)."""
    if not path.is_file():
        pytest.fail(f"golden file missing: {path} (it is part of the repository: restore tests/golden/ "
                    f"with `git checkout -- tests/golden`)", pytrace=False)
    return path


def load_golden(path: Path):
    """np.load of a golden file, failing with a clear message when it is missing."""
    return np.load(golden_file(path))


@pytest.fixture(scope="session")
def golden():
    """Outputs of the authors' released ICCV code on small seeded inputs (tests/golden/README.md)."""
    return load_golden(GOLDEN)


@pytest.fixture(scope="session")
def dldkdpp_golden():
    """Outputs of the authors' DL-DKD++ code (branch master) on small seeded inputs (dldkdpp_golden.md)."""
    return load_golden(DLDKDPP_GOLDEN)


@pytest.fixture(scope="session")
def gmmformer_golden():
    """Outputs of the authors' GMMFormer / GMMFormerV2 code on small seeded inputs (gmmformer_golden.md)."""
    return load_golden(GMMFORMER_GOLDEN)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny generated collection (9 videos, tests/synthetic.py), one per test module; modules that need
    another define their own ``data``."""
    root = tmp_path_factory.mktemp("data")
    write_collection(str(root), n_videos=9)
    return str(root)
