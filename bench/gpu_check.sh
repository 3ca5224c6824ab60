#!/usr/bin/env bash
# Every GPU figure of issue 30 in one run, one JSON line each (last lines), for a lent GPU machine:
#   1. the step graphed under DDP (one NCCL rank under torchrun, so DDP's hooks, buckets and all-reduce run and
#      are captured) against the one-process graph and DDP eager, DCGAN-28 and DCGAN-64, fp32 and bf16;
#      torch.compile under DDP (fp32); the compiled anchor (plain loop under reduce-overhead);
#   2. bench/scaling.py --measured on those figures (8- and 64-GPU tables from measured step times);
#   3. every model family's images/s, peak memory and largest batch (bench/family_gpu.py), where it exists;
#   4. the GPU-only tests (CUDA graphs, DDP capture).
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (logs and JSON land in OUT_DIR, default $OUT or ./gpu-out)
# Missing Python packages travel as wheels in .whl/ (see the device notes in BENCHMARKS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" >/dev/null; then  # into the interpreter's own environment: every child process sees them
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl \
    || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
         .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site; }
fi
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c 'import torch, accelerate; print("torch", torch.__version__, "accelerate", accelerate.__version__,
  "nccl", torch.cuda.nccl.version())' | tee -a "$out/gpu.txt"

json_line() { tail -n 1 "$1" | grep '^{' || echo "{\"$2_failed\": true}"; }

for arch in dcgan28 dcgan64; do  # one run each, so a slow one cannot cost the other its figures
  timeout 180 python3 bench/train.py --device cuda --archs $arch --precisions no,bf16 --ddp --ddp-compile no \
    --plain-compile --steps 300 2>&1 | tee "$out/train-$arch.log"
  json_line "$out/train-$arch.log" "train_$arch" > "$out/train-$arch.json"
done
python3 -c 'import json, sys; print(json.dumps({k: v for f in sys.argv[1:] for k, v in json.load(open(f)).items()}))' \
  "$out"/train-dcgan28.json "$out"/train-dcgan64.json > "$out/train.json"

if grep -q _ddp_graph_img_s "$out/train.json"; then  # whatever was measured replaces its stand-in
  python3 bench/scaling.py --measured "$out/train.json" 2>&1 | tee "$out/scaling.log"
fi

if [ -f bench/family_gpu.py ]; then
  timeout 120 python3 bench/family_gpu.py 2>&1 | tee "$out/families.log"
fi

for k in ddp_step "trains_like_the_eager or graphed_step_replays"; do  # the DDP capture's test first
  timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_train.py -k "$k" > "$out/gpu_test.log" 2>&1
  tail -c 3000 "$out/gpu_test.log"; cat "$out/gpu_test.log" >> "$out/gpu_tests_full.log"
done | tee "$out/gpu_tests.log"

echo "== figures =="
cat "$out/train.json"
[ -f "$out/scaling.log" ] && tail -n 1 "$out/scaling.log"
[ -f "$out/families.log" ] && tail -n 1 "$out/families.log"
grep -E "passed|failed|error" "$out/gpu_tests.log"
