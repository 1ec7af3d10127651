"""Fixtures for the container tests: a real engine, the image built once per session.

These tests build the repository's Dockerfile and run deploy/compose.yaml with podman or docker.
Without an engine they are skipped, saying why; SHIELD_CONTAINERS_REQUIRED=1 (as .ci/run sets)
makes that a failure instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from engine import Engine, EngineMissing, find_engine  # noqa: E402

REQUIRED = os.environ.get("SHIELD_CONTAINERS_REQUIRED") == "1"


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return find_engine()
    except EngineMissing as why:
        if REQUIRED:
            pytest.fail(f"SHIELD_CONTAINERS_REQUIRED=1 but {why}")
        pytest.skip(str(why))


@pytest.fixture(scope="session")
def image(engine: Engine) -> Iterator[str]:
    """The image, built from this checkout (the build's seconds are printed)."""
    from engine import IMAGE

    seconds = engine.build()
    print(f"\nbuilt {IMAGE} with {engine.name} in {seconds:.0f} s")
    yield IMAGE
