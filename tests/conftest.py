"""Fixtures shared by the tests."""
import os
from pathlib import Path

import numpy as np
import pytest

# The authors' numbers live in the shared spec beside the checkout (CI clones the
# repository with shared/ beside it); DLDKD_GOLDEN overrides the location.
SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec"
GOLDEN = Path(os.environ.get("DLDKD_GOLDEN", SPEC / "golden" / "released_code_golden.npz"))


@pytest.fixture(scope="session")
def golden():
    """Outputs of the authors' released code on small seeded inputs (np.load of the golden npz)."""
    if not GOLDEN.is_file():
        pytest.skip(f"golden file not found at {GOLDEN} (set DLDKD_GOLDEN)")
    return np.load(GOLDEN)
