#!/usr/bin/env bash
# The trainer's GPU check, for a GPU host whose image has torch, transformers, peft and
# accelerate but no network: install the wheels carried in .whl/ (trl, datasets and what
# they need beyond that image), then run the speed benchmark on a random ~1B Llama.
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl trl==1.16.0 datasets==5.2.0 multiprocess==0.70.19 dill==0.4.1
#   bash loadtests/gpu_check.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-200}"
if [ -d .whl ]; then python3 -m pip install -q --no-deps --no-index .whl/*.whl; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft, accelerate, trl; print('torch', torch.__version__, 'trl', trl.__version__)"
gpus="$(python3 -c 'import torch; print(torch.cuda.device_count())')"
python3 -m loadtests.bench_trainer --device cuda --model-config llama-1b --steps "$steps" --seq-len 1024 --batch-size 8
if [ "$gpus" -gt 1 ]; then
  python3 -m loadtests.bench_trainer --device cuda --model-config llama-1b --steps "$steps" --seq-len 1024 \
    --batch-size $((8 * gpus)) --processes "$gpus" --runs lora
fi
