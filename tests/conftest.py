"""Fixtures shared by the tests."""
import os
from pathlib import Path

import numpy as np
import pytest

# The authors' numbers live in the shared spec beside the checkout (CI clones the
# repository with shared/ beside it); DLDKD_GOLDEN overrides the location.
SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec"
GOLDEN = Path(os.environ.get("DLDKD_GOLDEN", SPEC / "golden" / "released_code_golden.npz"))
DLDKDPP_GOLDEN = GOLDEN.parent / "dldkdpp_golden.npz"
GMMFORMER_GOLDEN = GOLDEN.parent / "gmmformer_golden.npz"


@pytest.fixture(scope="session")
def golden():
    """Outputs of the authors' released code on small seeded inputs (np.load of the golden npz)."""
    if not GOLDEN.is_file():
        pytest.skip(f"golden file not found at {GOLDEN} (set DLDKD_GOLDEN)")
    return np.load(GOLDEN)


@pytest.fixture(scope="session")
def dldkdpp_golden():
    """Outputs of the authors' DL-DKD++ code (branch master) on small seeded inputs."""
    if not DLDKDPP_GOLDEN.is_file():
        pytest.skip(f"DL-DKD++ golden file not found at {DLDKDPP_GOLDEN} (set DLDKD_GOLDEN to the ICCV file beside it)")
    return np.load(DLDKDPP_GOLDEN)


@pytest.fixture(scope="session")
def gmmformer_golden():
    """Outputs of the authors' GMMFormer / GMMFormerV2 code (gmmformer_golden.md beside the file)."""
    if not GMMFORMER_GOLDEN.is_file():
        pytest.skip(f"GMMFormer golden file not found at {GMMFORMER_GOLDEN} (set DLDKD_GOLDEN to the ICCV file beside it)")
    return np.load(GMMFORMER_GOLDEN)
