#!/usr/bin/env bash
# Run one test N times in a row (default: the torchrun SIGTERM-and-resume test, 30 times) and print a
# table: a rare failure, such as the rank that CI once saw abort in gloo as the run ended, shows as
# a failed row with its last output lines. Exit status 1 if any run failed.
#   bash benchmarks/repeat_test.sh [TEST_NODE_ID] [N]
set -uo pipefail
cd "$(dirname "$0")/.."
node="${1:-tests/test_distributed.py::test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_resumes_exactly}"
count="${2:-30}"
python="${PYTHON:-.venv/bin/python}"
failed=0
echo "| run | result | seconds |"
echo "| --- | --- | --- |"
for run in $(seq 1 "$count"); do
  started=$(date +%s)
  if output=$("$python" -m pytest -q -p no:cacheprovider "$node" 2>&1); then result=passed; else result=FAILED; failed=$((failed + 1)); fi
  echo "| $run | $result | $(( $(date +%s) - started )) |"
  if [ "$result" = FAILED ]; then echo "$output" | tail -40 | sed 's/^/    /'; fi
done
echo
echo "$node: $((count - failed)) of $count passed"
[ "$failed" -eq 0 ]
