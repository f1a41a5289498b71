"""Shared fixtures: a tiny LLaVA saved to disk and loaded back with ``from_pretrained``, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from psaguard.dtypes import describe_cpu
from psaguard.testing import save_tiny_family
from psaguard.testing.llava import save_tiny_llava


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The CPU the suite ran on and the instruction sets its kernels pick from, so a failure can be read."""
    return [f"cpu: {describe_cpu()}"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The same line at the end, where `-q` (which hides the header) still shows it."""
    terminalreporter.write_line(f"cpu: {describe_cpu()}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow; set PSAGUARD_SLOW=1 to run")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and os.environ.get("PSAGUARD_SLOW") != "1":
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny LLaVA model + processor saved in Hugging Face format."""
    return save_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="session")
def tiny_processor(tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture
def guard(tiny_model, tiny_processor):
    from psaguard import SafetyGuard

    torch.manual_seed(0)
    return SafetyGuard.attach(tiny_model, tiny_processor)


@pytest.fixture
def images() -> list[Image.Image]:
    """Three different RGB images of different sizes."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((32, 32), (40, 56), (64, 48))]


@pytest.fixture(scope="session")
def next_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny LLaVA-NeXT model + processor (any-resolution tiles) saved in Hugging Face format."""
    return save_tiny_family("llava_next", tmp_path_factory.mktemp("tiny_llava_next"))


@pytest.fixture(scope="session")
def next_model(next_dir):
    from transformers import LlavaNextForConditionalGeneration

    return LlavaNextForConditionalGeneration.from_pretrained(next_dir).eval()


@pytest.fixture(scope="session")
def next_processor(next_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(next_dir)


@pytest.fixture
def shaped_images() -> list[Image.Image]:
    """Square, wide and tall images: each picks a different LLaVA-NeXT tile layout."""
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((32, 32), (40, 80), (80, 40))]
