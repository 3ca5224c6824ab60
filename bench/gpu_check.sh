#!/usr/bin/env bash
# Every GPU figure of issue 30 in one run, one JSON line each (last lines), for a lent GPU machine:
#   1. the step graphed under DDP (one NCCL rank under torchrun, so DDP's hooks, buckets and all-reduce run and
#      are captured) against the one-process graph and DDP eager, DCGAN-28 and DCGAN-64, fp32 and bf16;
#      torch.compile under DDP (fp32); the compiled anchor (plain loop under reduce-overhead);
#   2. bench/scaling.py --measured on those figures (8- and 64-GPU tables from measured step times);
#   3. every model family's images/s (fp32, bf16), peak memory and largest batch (bench/family_gpu.py);
#   4. the house model (configs/fashion_house.yaml) trained on the GPU and exported: its ONNX files come back
#      in OUT_DIR/house/, and Inception FID-10k is computed on a CPU afterwards (the Inception weights are too
#      big to travel: `distgan-eval --onnx OUT_DIR/house/generator.onnx --data data/fashion-mnist
#      --features inception --n 10000`); needs data/fashion-mnist carried (distgan-data prepare fashion-mnist);
#   5. the GPU-only tests (CUDA graphs, DDP capture).
# Usage: [PARTS=ddp,families,house,tests] [HOUSE_SECONDS=300] bash bench/gpu_check.sh [OUT_DIR]
#   (logs and JSON land in OUT_DIR, default $OUT or ./gpu-out; PARTS: the parts to run, all by default)
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
part() { [[ ",${PARTS:-ddp,families,house,tests}," == *",$1,"* ]]; }

if part ddp; then
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
fi

if part families; then  # 12 children of <= 60 s each
  timeout 420 python3 bench/family_gpu.py --timeout 60 --search-seconds 15 2>&1 | tee "$out/families.log"
fi

if part house; then  # configs/fashion_house.yaml for HOUSE_SECONDS (a STOP file then checkpoints it), exported
  run=/tmp/house-run
  python3 distgan/train.py --config configs/fashion_house.yaml run_dir=$run name=house log.log_with=none \
    > "$out/house-train.log" 2>&1 &
  trainer=$!
  sleep "${HOUSE_SECONDS:-300}"; touch $run/house/STOP; wait $trainer
  tail -n 3 "$out/house-train.log"; tail -n 1 $run/house/metrics.jsonl > "$out/house-last-metrics.json"
  mkdir -p "$out/house"
  python3 -m distgan.export.cli --onnx $run/house --out "$out/house/generator.onnx" 2>&1 | tail -n 2
  python3 -m distgan.export.cli --onnx $run/house --out "$out/house/generator-int8.onnx" --quantize int8 2>&1 | tail -n 2
fi

part tests && for k in ddp_step "trains_like_the_eager or graphed_step_replays"; do  # the DDP capture's test first
  timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_train.py -k "$k" > "$out/gpu_test.log" 2>&1
  tail -c 3000 "$out/gpu_test.log"; cat "$out/gpu_test.log" >> "$out/gpu_tests_full.log"
done | tee "$out/gpu_tests.log"

echo "== figures =="
[ -f "$out/train.json" ] && cat "$out/train.json"
[ -f "$out/scaling.log" ] && tail -n 1 "$out/scaling.log"
[ -f "$out/families.log" ] && tail -n 1 "$out/families.log"
[ -f "$out/gpu_tests.log" ] && grep -E "passed|failed|error" "$out/gpu_tests.log"
[ -f "$out/house-last-metrics.json" ] && cat "$out/house-last-metrics.json"
