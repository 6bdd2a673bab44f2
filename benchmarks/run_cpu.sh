#!/usr/bin/env bash
# Every CPU benchmark in sequence, each writing its JSON into benchmarks/results/. Run on a quiet machine:
# the figures in BENCHMARKS.md come from this script. GPU figures: the same scripts with --device cuda.
set -uo pipefail  # one failing benchmark does not stop the others
cd "$(dirname "$0")/.."
py=.venv/bin/python
$py benchmarks/assets.py --sizes 192 512 --count 20
$py benchmarks/data_make.py --workers 2 --shards 0:12
$py benchmarks/loader.py --size 192 --workers 2
$py benchmarks/generator.py --device cpu
$py benchmarks/infer.py --device cpu --backends eager onnx  # torch.compile takes minutes per shape on a CPU
$py benchmarks/teacher.py --workers 2
$py benchmarks/train_step.py --devices cpu --sizes 64 112 192 --dtypes fp32 bf16 --steps 3 --max-s 8
$py benchmarks/league.py --cpu
$py benchmarks/video.py
$py benchmarks/serve_load.py
$py benchmarks/fuzz.py --cases 1200  # the mutation run: counts of ok / clear error / traceback / hang
