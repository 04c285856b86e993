#!/usr/bin/env bash
# Mutation testing with mutmut (`pip install -e '.[mutation]'`) of what the benchmark's numbers
# rest on: the bits measure (metrics.py), the tool loop (decode.py; tool.py's call parsing and
# serving, stores.py's memory-store lookup), the stopping rule (stopping.py plateaued,
# late_gain) and degradation (the engine's fact_record and method_evaluation, degrade.make_cell
# and general_measures, divergences.divergence). Only the fast tests listed under
# [tool.mutmut] in pyproject.toml run against each mutant. Not run in CI: it uses both cores
# for up to MUTATION_MINUTES (default 25); then `mutmut results` lists the survivors and
# `mutmut show NAME` shows one. README.md (Testing) says why each survivor is harmless.
#
#   bash tools/mutation_test.sh [MUTANT_GLOB ...]
#   MUTATION_MINUTES=25 (time cap)  MUTATION_CHILDREN=2 (parallel mutants)
#   MUTATION_FRESH=0 (resume: keep the last run's kills, rerun its survivors and unchecked)
set -uo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu PYTHONPATH=
# compiled XLA programs are reused across the mutants' fresh processes
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/recall_bench_mutation_jax}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
targets=(
  "recall_bench.metrics.*"
  "recall_bench.decode.*"
  "recall_bench.tool.x_parse_call__*"
  "recall_bench.tool.x__invalid__*"
  "recall_bench.tool.x_serve_calls__*"
  "recall_bench.tool.x_result_lengths__*"
  "recall_bench.stores.xǁMemoryStoreǁlookup__*"
  "recall_bench.stopping.x_plateaued__*"
  "recall_bench.stopping.x_late_gain__*"
  "recall_bench.divergences.x_divergence__*"
  "recall_bench.experiments.engine.x_fact_record__*"
  "recall_bench.experiments.engine.x_method_evaluation__*"
  "recall_bench.experiments.degrade.x_make_cell__*"
  "recall_bench.experiments.degrade.x_general_measures__*"
)
[ $# -gt 0 ] && targets=("$@")
run=("${targets[@]}")
if [ "${MUTATION_FRESH:-1}" = 1 ]; then
  rm -rf mutants
elif [ -d mutants ]; then
  # mutmut reruns every mutant its command line names (globs too): name only those in scope
  # that are not yet killed (survived or not checked), so a resumed run goes on, not over
  mapfile -t run < <(mutmut results --all true 2>/dev/null | python3 -c '
import fnmatch, sys
for line in sys.stdin:
    name, _, status = line.strip().rpartition(": ")
    if status in ("survived", "not checked") and any(fnmatch.fnmatch(name, t) for t in sys.argv[1:]):
        print(name)' "${targets[@]}")
  echo "resuming: ${#run[@]} mutants not yet killed"
fi
log="${TMPDIR:-/tmp}/recall_bench_mutation.log"
[ ${#run[@]} -gt 0 ] && timeout "$((${MUTATION_MINUTES:-25} * 60))" \
  mutmut run --max-children "${MUTATION_CHILDREN:-2}" "${run[@]}" >"$log" 2>&1
echo "mutmut exit: $? (0: all ran; otherwise stopped at the time cap, the rest not checked); log: $log"
mutmut results --all true >mutants/results.txt 2>/dev/null
python3 - "${targets[@]}" <<'PY'
import collections, fnmatch, sys
rows = [line.strip().rsplit(": ", 1) for line in open("mutants/results.txt") if ": " in line]
mine = [(name, status) for name, status in rows if any(fnmatch.fnmatch(name, t) for t in sys.argv[1:])]
print(f"{len(mine)} mutants in scope:", dict(collections.Counter(s for _, s in mine)))
for name, status in mine:
    if status == "survived":
        print("survived:", name)
PY
echo "show one: mutmut show NAME"
