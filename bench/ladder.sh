#!/usr/bin/env bash
# The ladder on a multi-GPU machine: one group of rungs per GPU, in parallel, each group with its
# own eager baseline (speed-ups are always measured on the card that ran the rung). From the repository root:
#
#   bench/ladder.sh OUT_DIR "eager_attention aot_bf16" "aot_fp8_row aot_fp8_tensor" -- --cudagraph
#
# LADDER_TIMEOUT (seconds) stops each group, keeping the rows it measured. Writes OUT_DIR/gpu<i>.json and .log, then the merged table (python -m bench.report) to OUT_DIR/table.md.
set -u
out=${1:?usage: bench/ladder.sh OUT_DIR GROUP... [-- BENCH_ARGS...]}
shift
groups=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do groups+=("$1"); shift; done
[ $# -gt 0 ] && shift
mkdir -p "$out"
for i in "${!groups[@]}"; do
  # shellcheck disable=SC2086  # a group is a space-separated list of rungs
  CUDA_VISIBLE_DEVICES=$i timeout "${LADDER_TIMEOUT:-3600}" python3 -m bench.bench_transformer --rungs eager ${groups[$i]} \
    --json "$out/gpu$i.json" "$@" > "$out/gpu$i.log" 2>&1 &
done
wait
python3 -m bench.report --table "$out"/gpu*.json | tee "$out/table.md"
