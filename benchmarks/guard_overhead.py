"""What the guard costs next to the model it guards, measured side by side in one run.

    python benchmarks/guard_overhead.py                          # tiny model, CPU, seconds
    python benchmarks/guard_overhead.py --shapes llava-1.5-7b    # 7B shapes: CPU measures the parts
    python benchmarks/guard_overhead.py --shapes llava-1.5-7b --device cuda --dtype bfloat16 --full

Random weights give valid timings. Without ``--full`` at 7B shapes, the language model is measured as
one decoder layer times the number of layers (prefill only), so that the script fits a CPU machine;
``--full`` builds the whole model and also times decoding (needs a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from shapes import llava_15_7b_config
from transformers import LlavaForConditionalGeneration

from psaguard import SafetyGuard
from psaguard.backbones import LlavaBackbone
from psaguard.testing.llava import TinyLlavaSpec, build_tiny_llava, build_tiny_processor

SHAPES = {
    "tiny": TinyLlavaSpec(),
    # The processor's image side and patch; the model itself is benchmarks/shapes.py's.
    "llava-1.5-7b": TinyLlavaSpec(image_size=336, patch_size=14),
}
PROMPT = "what is shown in this image ? describe the colour and the shape please"


def timeit(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in ms, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--full", action="store_true", help="build the whole language model (GPU at 7B shapes)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    spec = SHAPES[args.shapes]
    full = args.full or args.shapes == "tiny"
    torch.manual_seed(0)

    processor = build_tiny_processor(spec)
    if args.shapes == "tiny":
        config = build_tiny_llava(spec, processor).config
    else:
        config = llava_15_7b_config(processor.tokenizer.convert_tokens_to_ids("<image>"))
    layers = config.text_config.num_hidden_layers
    if not full:  # one decoder layer stands for all of them (prefill scales linearly in depth)
        config.text_config.num_hidden_layers = 1
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype).eval()
    guard = SafetyGuard.attach(model, processor)
    backbone: LlavaBackbone = guard.backbone  # type: ignore[assignment]
    from PIL import Image

    image = Image.new("RGB", (spec.image_size, spec.image_size), (200, 30, 30))
    pixels = backbone.preprocess(processor, [image])["pixel_values"].to(device)

    with torch.inference_mode():
        features = backbone.encode_images(pixels)
        t_vision = timeit(lambda: backbone.encode_images(pixels), device, args.repeats)
        t_modules = timeit(lambda: guard.head_logits(features, [PROMPT]), device, args.repeats)
        t_classify = timeit(lambda: guard.classify(image, PROMPT), device, args.repeats)
        n_image = features.selected.shape[1]
        n_text = len(processor.tokenizer(PROMPT)["input_ids"]) + 8
        d = config.text_config.hidden_size
        lm = model.model.language_model

        def prefill(extra: int) -> Callable[[], object]:
            embeds = torch.randn(1, n_image + extra + n_text, d, device=device, dtype=dtype)
            return lambda: lm(inputs_embeds=embeds, use_cache=False)

        scale = 1 if full else layers
        t_prefill = timeit(prefill(0), device, args.repeats) * scale
        t_prefill_tokens = timeit(prefill(guard.config.tokens.num_tokens), device, args.repeats) * scale
        t_decode = None
        if full:
            ids = torch.randint(0, 100, (1, n_image + n_text), device=device)
            t_gen = timeit(
                lambda: model.generate(input_ids=ids, max_new_tokens=32, min_new_tokens=32, do_sample=False),
                device,
                max(2, args.repeats // 2),
                warmup=1,
            )
            t_decode = t_gen - t_prefill

    params = sum(p.numel() for p in guard.modules.parameters())
    print(
        f"shapes={args.shapes} device={device} dtype={args.dtype} "
        f"{'full model' if full else f'1 of {layers} LLM layers, scaled'}; guard modules {params / 1e6:.1f}M params"
    )
    print(f"{'vision tower (B=1)':42} {t_vision:10.2f} ms")
    print(f"{'safety projector + head':42} {t_modules:10.2f} ms")
    print(f"{'guard.classify end to end':42} {t_classify:10.2f} ms")
    print(f"{'LLM prefill, plain':42} {t_prefill:10.2f} ms  ({n_image + n_text} tokens)")
    print(f"{'LLM prefill, + llm_tokens':42} {t_prefill_tokens:10.2f} ms")
    if t_decode is not None:
        print(f"{'LLM 32 decode steps (generate - prefill)':42} {t_decode:10.2f} ms")
    print("ratios:")
    print(f"  safety modules / vision tower            {t_modules / t_vision:8.3f}")
    print(f"  classify / (vision + prefill)            {t_classify / (t_vision + t_prefill):8.3f}")
    print(f"  prefill with llm_tokens / plain prefill  {t_prefill_tokens / t_prefill:8.3f}")
    if t_decode is not None:
        total = t_vision + t_prefill + t_decode
        print(f"  classify / (plain 32-token answer)       {t_classify / total:8.3f}")


if __name__ == "__main__":
    main()
