#!/usr/bin/env bash
# The one prepared GPU check of issue 17 (the GPU path at full speed): what a session with an
# NVIDIA GPU runs, in the repository root, in about 5-8 minutes. It writes under $OUT (default
# ./gpu_check_out):
#   tests.log        tests/test_device_path.py with DQL_TEST_DEVICE=cuda: the numpy host path
#                    vs the CUDA device path (same trajectories within float tolerance, every
#                    reward kind, multi-market, checkpoint round trip), one update CPU vs CUDA,
#                    training steps under torch.cuda.set_sync_debug_mode("error"), and a real
#                    torch.compile of the update (DQL_TEST_COMPILE=1)
#   gpu_bench.json   bench/engine_throughput.py --gpu_only: env steps/s of (n_envs, batch) pairs
#   bench.log        at one replay ratio, the bare-update limit on that GPU, ours / limit, SB3
#                    on the same GPU
#   gpu_profile.json `python -m engine profile --device cuda` (the record dqlctl profile stores)
#   gpu_fill.json    `python -m engine profile --fill --device cuda`: the (n_envs, batch) pairs
#                    fastest first (its lines and the recommendation appended to profile.log)
#   profile.log, env.txt (torch, GPU, driver)
#
#   bench/gpu_check.sh                 # on the GPU machine
#   bench/gpu_check.sh --cpu-dry-run   # here: every part on the CPU, tiny sizes (~1-2 min)
#
# The device machine of this workplace (nvidia-h200) has python3 with torch, numpy, pandas,
# pyarrow, matplotlib, pyyaml and pytest, and no network. stable-baselines3 and gymnasium are
# not there: bring them as wheels, here, in the repo root, before the run (the run's `carry`
# names .whl):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl stable-baselines3==2.9.2 gymnasium==1.4.0 farama-notifications==0.0.6
# (the versions of this repository's venv; pure-Python wheels). Without them the benchmark
# says so and gives the other figures. Run as one command, e.g.
#   set -o pipefail; bench/gpu_check.sh 2>&1 | tee $OUT/check.log     (timeout_s 540)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl && export PYTHONPATH=/tmp/gpu_check_site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  BENCH=(--gpu_device cpu --gpu_pairs 16:64 --env_steps 3000)
  PROFILE=(--device cpu --batch_size 256 --n_envs 64 --seconds 1 --step_on_device on)
else
  DEVICE=cuda
  BENCH=(--env_steps 200000)
  PROFILE=(--device cuda --batch_size 4096 --n_envs 1024 --seconds 10)
fi
failed=()

{
  "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__,
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available()
else '')"
  [ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} 2>&1 | tee "$OUT/env.txt"

echo "== device-path tests ($DEVICE)"
DQL_TEST_DEVICE=$DEVICE DQL_TEST_COMPILE=1 timeout 240 "$PY" -m pytest -q -p no:cacheprovider \
  --noconftest -o addopts="" tests/test_device_path.py 2>&1 | tee "$OUT/tests.log" \
  || failed+=(tests)

echo "== benchmark ($DEVICE)"
timeout 300 "$PY" bench/engine_throughput.py --gpu_only --json "$OUT/gpu_bench.json" \
  "${BENCH[@]}" 2>&1 | tee "$OUT/bench.log" || failed+=(bench)

echo "== profile ($DEVICE)"
timeout 120 "$PY" -m engine profile --data_file STOCKS_GOOGL.csv --agent_type dql \
  --hidden_sizes 64,64 "${PROFILE[@]}" >"$OUT/gpu_profile.json" 2>"$OUT/profile.log" \
  || failed+=(profile)
cat "$OUT/profile.log" "$OUT/gpu_profile.json"

echo "== fill ($DEVICE): the n_envs/batch pairs that make the engine fastest there"
if [ "$DRY" = 1 ]; then FILL=(--device cpu --pairs 16:64 --seconds 1); else FILL=(--device cuda --seconds 5); fi
timeout 240 "$PY" -m engine profile --fill --data_file STOCKS_GOOGL.csv "${FILL[@]}" \
  >"$OUT/gpu_fill.json" 2>>"$OUT/profile.log" || failed+=(fill)
tail -n 20 "$OUT/profile.log"

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${failed[*]} (logs in $OUT)"
  exit 1
fi
echo "gpu_check: all parts passed (results in $OUT)"
