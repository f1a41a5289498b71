"""A small built world shared by the world tests."""

from __future__ import annotations

import pytest

from psaguard.training.world.build import WorldSpec, build_world


@pytest.fixture(scope="session")
def small_spec() -> WorldSpec:
    return WorldSpec(seed=3, image_size=32, n_train=240, n_val=40, n_test=160, n_attack=40)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory, small_spec: WorldSpec):
    out = tmp_path_factory.mktemp("world")
    build_world(out, small_spec)
    return out
