"""Whether the guard's own modules should compute in float32 when the model is bfloat16 on this CPU.

    python benchmarks/guard_modules_dtype.py [--tiny] [--repeats 5] [--threads 2]

Builds the safety modules (default ``SafetyGuardConfig``) at LLaVA-1.5-7B's widths (vision 1024, text 4096;
576 patches, a 24-token prompt) and times one forward pass on bfloat16 inputs, as the vision tower and token
embeddings of a bfloat16 model hand them over, with the modules in bfloat16 and in float32 (inputs cast
inside), round-robin in one process. Prints the CPU, its instruction sets, the seconds and the ratio.
"""

from __future__ import annotations

import argparse
import copy

import torch
from machine import describe_machine
from measure import round_robin

from psaguard.config import SafetyGuardConfig
from psaguard.modules import SafetyModules

VISION, TEXT, PATCHES, PROMPT_TOKENS = 1024, 4096, 576, 24


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny widths (a second; what the test runs)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per dtype")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vision, text, patches, config = VISION, TEXT, PATCHES, SafetyGuardConfig()
    if args.tiny:
        vision, text, patches = 32, 64, 16
        config = SafetyGuardConfig.model_validate({"tokens": {"num_tokens": 4}, "head": {"num_heads": 2}})
    inputs = (
        torch.randn(1, patches, vision, dtype=torch.bfloat16),
        torch.randn(1, PROMPT_TOKENS, text, dtype=torch.bfloat16),
        torch.ones(1, PROMPT_TOKENS, dtype=torch.bool),
    )
    built = SafetyModules(config, vision, text).eval()
    modules = {name: copy.deepcopy(built).to(dtype) for name, dtype in _DTYPES}
    with torch.inference_mode():
        runs = round_robin({name: lambda m=m: m(*inputs) for name, m in modules.items()}, args.repeats)
    machine = describe_machine()
    print(
        f"CPU {machine['cpu']} ({machine['cores']} cores; {machine['instruction_sets']}), threads {args.threads}, "
        f"load average {' / '.join(f'{v:.2f}' for v in machine['load_average'] or [])}, torch {machine['torch']}"
    )
    for name, r in runs.items():
        spread = f"min {r.low:.4f}, max {r.high:.4f}, {args.repeats} runs"
        print(f"safety modules in {name}: median {r.median:.4f} s ({spread})")
    print(f"bfloat16 / float32 time: {runs['bfloat16'].median / runs['float32'].median:.2f}")


_DTYPES = (("float32", torch.float32), ("bfloat16", torch.bfloat16))


if __name__ == "__main__":
    main()
