#!/usr/bin/env bash
# One lent GPU, one script: the static sampler's check and the GPU row of bench/README.md, under $OUT.
#
# Prepared here (a machine with pip), then run there by the device tool with `carry: [".device"]`:
#   mkdir -p .device/whl && pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .device/whl \
#       trl==1.16.0 datasets==4.7.0 dill==0.4.0 multiprocess==0.70.18 transformers==5.24.0
#   python -c "import minigrpo as mg; mg.load_model('smollm2')[1].save_pretrained('.device/tokenizer')"
#   git rev-parse HEAD > .device/commit        # the commit the measurement runs at
#   bash bench/gpu_session.sh          # on the GPU machine (it has torch, transformers, accelerate)
# The dry run below needed httpx (the GPU image has it; a venv from requirements.txt may not).
# transformers 5.24 is carried (the image's huggingface_hub 1.33 is enough for it): minigrpo needs
# >= 5.24 (requirements.txt; the cache argument is `cache` from 5.24 on), and the image's 5.17 static
# cache cannot keep float32 keys beside bfloat16 values (autocast over float32 weights). Should the
# static sampler (bench/static_sampler.py) find an older version, its trainers and the check are left
# out and the rest still runs.
# It never profiles a whole generate. About 8 minutes on an H200: give it a 540 s limit, which leaves
# a 15-minute lease room for a rerun of the check alone. A dry run on a CPU, with small sizes:
#   DEVICE=cpu SHAPE=smollm2-135m SIZES="--prompts_per_step 2 --max_new_tokens 4 --micro_batch_size 8 \
#     --steps 1 --warmup 0" CHECK="--prompts 2 --group_size 2 --max_new_tokens 4" bash bench/gpu_session.sh
set -o pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; git rev-parse HEAD 2>/dev/null || cat .device/commit; \
  python3 -c "import torch, transformers, trl; print(torch.__version__, transformers.__version__, trl.__version__)"; } \
    2>&1 | tee "$OUT/versions.txt"
SHAPE=${SHAPE:-qwen2.5-0.5b}
SIZES=${SIZES:---prompts_per_step 16 --max_new_tokens 256 --micro_batch_size 32 --steps 3 --warmup 2}
CHECK=${CHECK:---prompts 16 --group_size 8 --max_new_tokens 64}
STATIC=,minigrpo_static,minigrpo_static_unshared
python3 -c "import sys; sys.path.insert(0, 'bench'); import static_sampler; assert not static_sampler.static_cache_too_old()" 2>&1 | tail -1 | tee -a "$OUT/versions.txt" \
    || { STATIC=; echo "no static sampler with bfloat16 here: its trainers and check left out" | tee -a "$OUT/versions.txt"; }
python3 bench/random_init_model.py --shape "$SHAPE" --tokenizer .device/tokenizer --out /tmp/qwen || exit 1
# 1. the static sampler against the eager loop: logits within bf16 tolerance, the same greedy tokens
[ -n "$STATIC" ] && timeout 150 python3 bench/static_sampler_check.py --model /tmp/qwen --dtype bfloat16 --device "${DEVICE:-cuda}" \
    $CHECK 2>&1 | tee "$OUT/static_sampler_check.txt"
# 2. every trainer in one process: the README's GPU recipe shape, equal work by construction
timeout 330 python3 bench/step_time.py --model /tmp/qwen --dtype bfloat16 $SIZES \
    --trainers minigrpo,minigrpo_unshared,floor,trl$STATIC \
    2>&1 | grep -v "it/s\]" | tee "$OUT/step_time_${SHAPE}.txt"
