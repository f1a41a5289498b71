#!/usr/bin/env bash
# The GPU evidence in one command (issue #18): install carried wheels, then run benchmarks/gpu_suite.py.
#
#   OUT=/path/to/results bash benchmarks/gpu_suite.sh [gpu_suite.py options]
#
# On a fresh GPU machine that reaches no registry, the Python packages its image lacks travel as wheels in
# the git-ignored .whl/ folder of this checkout (docs/benchmarks.md says how to download them); they are
# installed into /tmp/site, without touching the image's torch. psaguard itself is linked into /tmp/site
# from this checkout in its installed layout (pyproject's package-dir: psaguard = guard/, with adapters/ and
# training/ inside), so nothing is built there.
# Where psaguard already imports (a developer's .venv), nothing is installed. Everything the run writes goes
# under $OUT (default runs/gpu_suite): suite.log, pytest_gpu.txt, tables.md, raw.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-runs/gpu_suite}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ! "$PYTHON" -c "import psaguard" 2>/dev/null; then
    SITE=/tmp/site
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    fi
    mkdir -p "$SITE/psaguard"
    ln -sfn "$PWD"/guard/* "$SITE/psaguard/"
    ln -sfn "$PWD/adapters" "$SITE/psaguard/adapters"
    ln -sfn "$PWD/training" "$SITE/psaguard/training"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import torch, transformers, psaguard; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
"$PYTHON" benchmarks/gpu_suite.py --out "$OUT" "$@" 2>&1 | tee "$OUT/suite.log"
