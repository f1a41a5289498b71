from __future__ import annotations

import subprocess
import sys

import pytest

import psaguard.training.world as world


def test_every_exported_name_resolves_and_unknown_names_raise():
    assert world.__all__ == sorted(world.__all__)
    for name in world.__all__:
        assert getattr(world, name) is not None
    with pytest.raises(AttributeError):
        _ = world.no_such_name


def test_importing_the_world_and_building_specs_does_not_import_torch():
    code = (
        "import sys, psaguard.training.world as w; w.WorldSpec(); w.world_vocabulary(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
