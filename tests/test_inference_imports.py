"""Inference never loads the training stack: no peft, no bitsandbytes (and so none of their start-up notices)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from psaguard import SafetyGuard

INFERENCE = """
import sys
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
from psaguard import SafetyGuard
from psaguard.cli.main import main

model_dir, guard_dir, image = sys.argv[1:]
model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
processor = AutoProcessor.from_pretrained(model_dir)
guard = SafetyGuard.from_pretrained(guard_dir, model=model, processor=processor)
picture = Image.open(image)
guard.classify(picture, "what is this ?")
guard.classify_batch([picture, picture], ["a", "b"])
guard.generate(picture, "what is this ?", max_new_tokens=2, return_blocked=True)
"".join(guard.stream(picture, "what is this ?", max_new_tokens=2))
guard.wrap(model)
assert main(["classify", "--guard", guard_dir, "--model", model_dir, image, "hi"]) == 0
assert main(["classify", "--classifier-only", "--guard", guard_dir, "--model", model_dir, image, "hi"]) == 0
assert main(["demo"]) == 0
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"peft", "bitsandbytes"})
assert not loaded, loaded
"""


def test_classify_generate_stream_wrap_cli_and_demo_import_no_peft_or_bitsandbytes(
    tiny_dir: Path, tiny_model, tiny_processor, images, tmp_path: Path
) -> None:
    SafetyGuard.attach(tiny_model, tiny_processor).save_pretrained(tmp_path / "guard")
    images[0].save(tmp_path / "x.png")
    done = subprocess.run(
        [sys.executable, "-c", INFERENCE, str(tiny_dir), str(tmp_path / "guard"), str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
