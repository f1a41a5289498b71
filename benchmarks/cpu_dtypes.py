"""The guard's parts on this CPU in float32 and in bfloat16, at LLaVA-1.5-7B shapes: which dtype to compute in.

    python benchmarks/cpu_dtypes.py [--tiny] [--repeats 3] [--threads 2]

Times, round-robin in one process, on random weights built from configs (nothing is downloaded or written):

- the vision tower (CLIP ViT-L/14 at 336 px, LLaVA-1.5's) on one image, in float32 and in bfloat16;
- the safety modules (default ``SafetyGuardConfig``, vision width 1024, text width 4096, 576 patches, a
  24-token prompt) on bfloat16 inputs, as a bfloat16 model hands them over, with the modules in bfloat16 and
  in float32 (inputs cast inside): the question for a guard attached to a model loaded in bfloat16.

Prints the CPU, its instruction sets, what ``psaguard.dtypes`` chooses here, the seconds and the ratios.
"""

from __future__ import annotations

import argparse
import copy

import torch
from machine import describe_machine
from measure import round_robin
from shapes import llava_15_7b_config
from transformers import CLIPVisionModel

from psaguard.config import SafetyGuardConfig
from psaguard.modules import SafetyModules

PROMPT_TOKENS = 24
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _tower(tiny: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    config = llava_15_7b_config().vision_config
    if tiny:
        config.update({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2})
    pixels = torch.randn(1, 3, config.image_size, config.image_size)
    return CLIPVisionModel(config).eval(), pixels


def _modules(tiny: bool) -> tuple[SafetyModules, tuple[torch.Tensor, ...]]:
    vision, text, patches, config = 1024, 4096, 576, SafetyGuardConfig()
    if tiny:
        vision, text, patches = 32, 64, 16
        config = SafetyGuardConfig.model_validate({"tokens": {"num_tokens": 4}, "head": {"num_heads": 2}})
    inputs = (
        torch.randn(1, patches, vision, dtype=torch.bfloat16),
        torch.randn(1, PROMPT_TOKENS, text, dtype=torch.bfloat16),
        torch.ones(1, PROMPT_TOKENS, dtype=torch.bool),
    )
    return SafetyModules(config, vision, text).eval(), inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny widths (seconds; what the test runs)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tower, pixels = _tower(args.tiny)
    modules, inputs = _modules(args.tiny)
    variants = {}
    for name, dtype in DTYPES.items():
        tower_copy, modules_copy, cast = (
            copy.deepcopy(tower).to(dtype),
            copy.deepcopy(modules).to(dtype),
            pixels.to(dtype),
        )
        variants[f"vision tower, {name}"] = lambda m=tower_copy, x=cast: m(pixel_values=x)
        variants[f"safety modules, {name}"] = lambda m=modules_copy: m(*inputs)
    with torch.inference_mode():
        runs = round_robin(variants, args.repeats)
    machine = describe_machine()
    load = " / ".join(f"{v:.2f}" for v in machine["load_average"] or [])
    print(
        f"{'tiny' if args.tiny else 'LLaVA-1.5-7B'} shapes, CPU {machine['cpu']} ({machine['instruction_sets']}; "
        f"{machine['cores']} cores), torch threads {args.threads}, torch {machine['torch']}, load average {load}, "
        f"{machine['date_utc']} UTC"
    )
    chosen = machine["cpu_bfloat16"]
    print(f"psaguard's default here for a bfloat16 checkpoint: {chosen['dtype']} ({chosen['reason']})")
    print("| part | dtype | median s | min | max | runs |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        part, dtype = name.split(", ")
        print(f"| {part} | {dtype} | {r.median:.4f} | {r.low:.4f} | {r.high:.4f} | {len(r.values)} |")
    for part in ("vision tower", "safety modules"):
        ratio = runs[f"{part}, bfloat16"].median / runs[f"{part}, float32"].median
        print(f"{part}: bfloat16 / float32 time = {ratio:.2f}")


if __name__ == "__main__":
    main()
