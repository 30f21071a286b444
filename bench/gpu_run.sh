#!/bin/sh
# On the borrowed GPU machine (docs/gpu.md): install the carried wheels into a folder of their own, add it
# to PYTHONPATH (added to, never replacing), record the dependency check, run the check. No registry needed.
#   sh bench/gpu_run.sh BUNDLE OUT        (the device call: sh bench/gpu_run.sh bench/gpu-bundle "$OUT")
bundle=${1:-bench/gpu-bundle}
out=${2:-bench/results/gpu}
site=${GPU_SITE:-/tmp/gpu-site}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$bundle"/wheels/*.whl \
	|| { echo "gpu_run: installing the carried wheels failed" >&2; exit 2; }
PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export GPU_BUNDLE="$bundle" PYTHONPATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 bench/gpu_deps.py --installed >"$out/deps.txt" 2>&1; echo "dependency check: rc $? ($out/deps.txt)"
python3 bench/gpu_check.py --out "$out" ${GPU_CHECK_ARGS:-}
