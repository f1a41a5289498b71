#!/usr/bin/env bash
# Real-size recipe, end to end: convert VLGuard + SPA-VL -> Stage I -> Stage II -> bench.
#
#   RECIPE=llava15_7b GPU=80gb examples/recipe_real_size.sh        # or GPU=24gb_nf4
#
# Recipes (examples/configs/RECIPE_stage{1,2}_{80gb,24gb_nf4}.yaml): llava15_7b (LLaVA-1.5-7B), qwen25vl_7b
# (Qwen2.5-VL-7B-Instruct), qwen35_9b (Qwen3.5-9B) and gemma4_e4b (Gemma 4 E4B-it); the last two go through
# the generic adapter.
#
# Put (unpack) the downloads under $DATA first: $DATA/VLGuard (train.json, test.json, train/, test/ from
# ys-zong/VLGuard) and $DATA/SPA-VL (the parquet files of sqrti/SPA-VL); see docs/datasets.md. Every converted
# row then points at images under $DATA, which is the image root of the merged training file.
# The configs are examples/configs/${RECIPE}_stage{1,2}_${GPU}.yaml; their memory figures are estimates.
#
# Environment (all optional): DATA (default runs/data), RUNS (default runs/$RECIPE-$GPU), MODEL (overrides the
# config's model), SUITES (extra converted suites in $DATA for the bench, comma-separated), PSAGUARD (the
# command, default psaguard), EXTRA / EXTRA1 / EXTRA2 (more --set overrides for both stages / stage 1 /
# stage 2; the CPU test uses them to run at tiny size).
set -euo pipefail

RECIPE=${RECIPE:-llava15_7b}
GPU=${GPU:-80gb}
DATA=${DATA:-runs/data}
RUNS=${RUNS:-runs/$RECIPE-$GPU}
PSAGUARD=${PSAGUARD:-psaguard}
CONFIGS=$(cd "$(dirname "$0")" && pwd)/configs
read -r -a extra <<< "${EXTRA:-}"
read -r -a extra1 <<< "${EXTRA1:-}"
read -r -a extra2 <<< "${EXTRA2:-}"
for stage in stage1 stage2; do
  if [[ ! -f "$CONFIGS/${RECIPE}_${stage}_${GPU}.yaml" ]]; then
    echo "error: no config $CONFIGS/${RECIPE}_${stage}_${GPU}.yaml; recipes:" \
      "$(cd "$CONFIGS" && ls ./*_stage1_80gb.yaml | sed 's|^\./||; s|_stage1_80gb.yaml||' | tr '\n' ' ')" >&2
    exit 2
  fi
done
model_set=()
model_arg=()
if [[ -n "${MODEL:-}" ]]; then model_set=(--set "model=$MODEL"); model_arg=(--model "$MODEL"); fi

echo "== convert"
$PSAGUARD data convert --format vlguard --src "$DATA/VLGuard" --split train --out "$DATA/vlguard_train.jsonl"
$PSAGUARD data convert --format vlguard --src "$DATA/VLGuard" --split test --out "$DATA/vlguard_test.jsonl"
$PSAGUARD data convert --format spa-vl --src "$DATA/SPA-VL" --split train --out "$DATA/spavl_train.jsonl"
cat "$DATA/vlguard_train.jsonl" "$DATA/spavl_train.jsonl" > "$DATA/train.jsonl"

echo "== stage 1"
$PSAGUARD train stage1 --config "$CONFIGS/${RECIPE}_stage1_${GPU}.yaml" "${model_set[@]}" \
  --set "train_data=$DATA/train.jsonl" --set "eval_data=$DATA/vlguard_test.jsonl" \
  --set "output_dir=$RUNS/stage1" "${extra[@]}" "${extra1[@]}"

echo "== stage 2"
$PSAGUARD train stage2 --config "$CONFIGS/${RECIPE}_stage2_${GPU}.yaml" "${model_set[@]}" \
  --set "guard=$RUNS/stage1" --set "train_data=$DATA/train.jsonl" --set "eval_data=$DATA/vlguard_test.jsonl" \
  --set "output_dir=$RUNS/stage2" "${extra[@]}" "${extra2[@]}"

echo "== bench"
$PSAGUARD bench --guard "$RUNS/stage2" "${model_arg[@]}" --suite "vlguard_test${SUITES:+,$SUITES}" \
  --data-dir "$DATA" --out "$RUNS/bench"
echo "report: $RUNS/bench/bench.md"
