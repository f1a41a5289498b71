import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _declared_packages() -> list[str]:
    return _setuptools()["packages"]


def _package_of(folder: Path) -> str | None:
    """The import name setuptools gives ``folder``: the deepest ``package-dir`` entry above it, plus the rest."""
    best = None
    for package, source in _setuptools()["package-dir"].items():
        base = ROOT / source
        if folder == base or base in folder.parents:
            depth = len(base.parts)
            if best is None or depth > best[0]:
                best = (depth, ".".join((package, *folder.relative_to(base).parts)))
    return None if best is None else best[1]


def test_every_source_and_asset_folder_is_a_declared_package():
    declared = set(_declared_packages())
    found = {
        _package_of(init.parent)
        for folder in ("guard", "adapters", "training")
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assets = ROOT / "guard" / "assets"
    for folder in assets.rglob("*"):
        if folder.is_dir() and any(p.is_file() for p in folder.iterdir()):
            found.add(_package_of(folder))
    assert found == declared


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    # The build must be clean: no deprecated license table, no data folder missing from `packages`.
    assert "Warning" not in built.stdout + built.stderr, built.stdout + built.stderr
    return next(out.glob("psaguard-*.whl"))


def test_wheel_contains_every_subpackage_and_the_type_marker(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in _declared_packages():
        if not package.startswith("psaguard.assets."):  # data-only folders have no __init__.py
            assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert "psaguard/py.typed" in names
    assert "psaguard/training/peers.json" in names  # the peers' published numbers `psaguard bench` shows
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_wheel_carries_every_demo_asset(wheel):
    """`psaguard demo` runs from an installed wheel: every file of the embedded assets is packaged."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assets = ROOT / "guard" / "assets" / "world_demo"
    files = [p for p in assets.rglob("*") if p.is_file()]
    assert any(p.name == "headline.json" for p in files)
    for path in files:
        assert f"psaguard/assets/world_demo/{path.relative_to(assets).as_posix()}" in names, path


def test_import_has_no_global_side_effects():
    code = (
        "import sys, logging, warnings, PIL.Image as I, torch, transformers, transformers.models.llava;"
        " before = (I.MAX_IMAGE_PIXELS, len(warnings.filters),"
        " logging.getLogger().level); import psaguard; psaguard.SafetyGuard;"
        " after = (I.MAX_IMAGE_PIXELS, len(warnings.filters), logging.getLogger().level);"
        " assert before == after, (before, after); assert 'langchain_core' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
