"""Which optional extra brings which import, so that a missing one is reported as a one-line install hint."""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["EXTRA_OF_MODULE", "install_hint", "require_extra"]

EXTRA_OF_MODULE: dict[str, str] = {
    "accelerate": "train",
    "bitsandbytes": "train",
    "matplotlib": "train",
    "peft": "train",
    "yaml": "train",
    "langchain_core": "langchain",
    "fastapi": "serve",
    "prometheus_client": "serve",
    "uvicorn": "serve",
    "pyarrow": "datasets",
}
"""Top-level module name -> the psaguard extra that installs it."""


def install_hint(err: ModuleNotFoundError) -> str | None:
    """``"<module> is missing: pip install 'psaguard[<extra>]'"`` for a module an extra provides, else None."""
    top = (err.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return f"this command needs {top!r}, which is not installed: pip install 'psaguard[{extra}]'"


def require_extra(extra: str) -> None:
    """Raise ``ModuleNotFoundError`` for the first module of ``extra`` that is not installed, before any work starts."""
    for module, owner in EXTRA_OF_MODULE.items():
        if owner == extra and find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
