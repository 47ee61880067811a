"""Shared fixtures: one local Ray instance for the whole session (ray.init costs seconds).

The tests keep what they cache (sparsetune's image checks, matplotlib's font list) out of the
user's cache directory: ``XDG_CACHE_HOME`` points at a temporary folder for the session and the
processes it starts (unless the caller set it)."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="sparsetune-tests-cache-"))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one (marked ``ray``)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    import search  # noqa: F401  (sets the driver's Tune environment before Ray starts)

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
