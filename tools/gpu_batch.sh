#!/usr/bin/env bash
# The GPU jobs of one device lease, in one command: a training-throughput benchmark on the
# quiet GPU, then side by side until the deadline: the 64k-parameter model past its capacity
# trained to a plateau (PLATEAU_RUNS: facts:batch:lr[:dtype] each, by default 16,384 and
# 32,768 facts at batch 512, lr 3e-3; each step budget sized by a 2,000-step probe to fit
# the time left), the 10x-budget capacity sweep in 4 shards, and fact injection with 10x
# the CPU run's budget. Everything lands in runs/gpu and, packed, in $OUT/gpu.tgz.
#
#   OUT=/tmp/gpu_out DEADLINE_S=540 bash tools/gpu_batch.sh    # needs jax with a GPU backend
# SKIP_BENCH=1 skips the benchmark; ONLY_PLATEAU=1 runs the plateau runs alone.
set -u
START=$(date +%s)
DEADLINE=$((START + ${DEADLINE_S:-540}))
OUT=${OUT:-runs/gpu_out}
R=runs/gpu
mkdir -p "$OUT" "$R"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1
RB=(python3 -m recall_bench.cli)  # a command timeout(1) can run
left() { echo $((DEADLINE - $(date +%s))); }
pack() { tar czf "$OUT/gpu.tgz" --exclude=checkpoints "$R"; }

python3 -c "import jax, flax, optax, orbax.checkpoint, jsonschema; print(jax.__version__, \
flax.__version__, jax.devices())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ -z "${SKIP_BENCH:-}" ]; then
  echo "== benchmark ($(left) s left)"
  timeout 150 python3 benchmarks/bench_train.py --window 1 --repeats 3 \
    --out $R/bench_train_gpu.json > $R/bench.log 2>&1
  tail -8 $R/bench.log
fi

plateau() {  # the 2-layer d=48 model on $1 facts at batch $2, peak lr $3, dtype $4, budget
  # fitted to the time left by a 2,000-step probe (lr 1e-2 at batch 512 sits on a noise floor
  # over long budgets: results/in_weight_capacity)
  local n=$1 b=$2 lr=$3 dt=$4 d=$R/d48-n$1-b$2-lr$3-$4 t0 steps
  local args=(--mode in-weight --facts "$n" --layers 2 --width 48 --heads 4 --batch-size "$b"
    --lr "$lr" --dtype "$dt" --quiet --json)
  t0=$(date +%s)
  "${RB[@]}" run "${args[@]}" --steps 2000 --out "$d-probe" > "$d-probe.json" 2> "$d-probe.log"
  steps=$(python3 - "$d-probe.json" "$(( $(date +%s) - t0 ))" "$(left)" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["train"]
probe_s, left = float(sys.argv[2]), float(sys.argv[3])
rate, overhead = t["steps"] / t["wall_s"], probe_s - t["wall_s"]
print(max(2000, min(2_000_000, int(rate * (left - overhead - 45) * 0.8)) // 1000 * 1000))
PY
)
  echo "d48 n=$n batch $b lr $lr $dt: budget $steps steps ($(left) s left)"
  timeout "$(left)" "${RB[@]}" run "${args[@]}" --steps "$steps" --out "$d" > "$d.json" 2> "$d.log"
  echo "d48 n=$n batch $b lr $lr $dt: exit $? ($(left) s left)"
}

echo "== parallel jobs ($(left) s left)"
for spec in ${PLATEAU_RUNS:-16384:512:3e-3 32768:512:3e-3}; do  # facts:batch:lr[:dtype]
  IFS=: read -r n b lr dt <<< "$spec"
  plateau "$n" "$b" "$lr" "${dt:-float32}" &
done
if [ -z "${ONLY_PLATEAU:-}" ]; then
  for i in 0 1 2 3; do
    timeout "$(left)" "${RB[@]}" sweep configs/capacity_gpu.toml --resume --shard $i/4 \
      --out $R/capacity_gpu --quiet > $R/sweep$i.log 2>&1 &
  done
  timeout "$(left)" "${RB[@]}" degrade --facts 256,2048,16384,65536 \
    --modes in-weight,in-tool,in-weight+replay --steps 5000 --out $R/degradation --quiet \
    > $R/degrade.log 2>&1 &
fi
while [ "$(jobs -r | wc -l)" -gt 0 ] && [ "$(left)" -gt 0 ]; do sleep 10; pack; done
wait
pack
ls $R $R/capacity_gpu | head -80
for f in $R/*.log; do echo "-- $f"; tail -n 3 "$f"; done
echo "done in $(( $(date +%s) - START )) s"
