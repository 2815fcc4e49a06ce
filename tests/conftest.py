"""Shared test helpers: the real data beside the checkout, and a local HTTP server fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from local_server import server  # noqa: F401  (the fault-injecting 127.0.0.1 HTTP server fixture)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real HPatches files); tests that need it skip when it is absent."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA
