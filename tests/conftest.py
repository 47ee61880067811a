"""Shared fixtures: one local Ray instance for the whole session (ray.init costs seconds)."""

from __future__ import annotations

import os

import pytest


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
