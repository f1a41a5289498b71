"""Importing psaguard (and its adapters package) loads no LangChain module; using an adapter does."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import psaguard, psaguard.adapters
assert not [m for m in sys.modules if m.startswith(("langchain", "langgraph"))], "langchain imported eagerly"
psaguard.adapters.GuardRunnable
assert "langchain_core" in sys.modules
"""


def test_import_psaguard_does_not_import_langchain():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
