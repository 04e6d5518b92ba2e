#!/usr/bin/env bash
# Run `siamjax train` as N processes on this machine, each with several fake CPU devices.
#
# This is how the multi-host code paths (jax.distributed, per-process data shards, collective
# checkpoints, cross-process negatives) are exercised without a cluster.
#
# Usage:   launch/local_multiprocess.sh [--dry-run] N CONFIG [extra `siamjax train` args...]
# Example: launch/local_multiprocess.sh 2 configs/stsb_minilm.py --workdir runs/mp \
#              --config.train.num_steps=20
#
# Variables (optional):
#   DEVICES_PER_PROCESS  fake CPU devices per process (default 4)
#   PORT                 coordinator port on localhost (default 12355)
#   PYTHON               interpreter (default python3)
#   XLA_FLAGS            kept; each process gets the fake-device count appended to it
# If any process exits non-zero, the others are stopped and the script exits with its code.
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
if [[ $# -lt 2 ]]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
n="$1"; config="$2"; shift 2
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then echo "N must be a positive integer, got '$n'" >&2; exit 2; fi
devices="${DEVICES_PER_PROCESS:-4}"
port="${PORT:-12355}"
python="${PYTHON:-python3}"

# Each argument shell-quoted (%q), so overrides like "--config.x=(('a','b'),)" survive `bash -c`.
quoted_args="$(printf ' %q' --config "$config" "$@")"
xla_flags="$(printf '%q' "${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=${devices}")"
commands=()
for ((i = 0; i < n; i++)); do
  commands+=("XLA_FLAGS=${xla_flags} JAX_PLATFORMS=cpu \
SIAMJAX_COORDINATOR=localhost:${port} SIAMJAX_NUM_PROCESSES=${n} SIAMJAX_PROCESS_ID=${i} \
${python} -m siamjax.cli train${quoted_args}")
done

if [[ $dry_run -eq 1 ]]; then
  printf '%s\n' "${commands[@]}"
  exit 0
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for cmd in "${commands[@]}"; do
  bash -c "exec env $cmd" &  # env: the command starts with VAR=value assignments
  pids+=("$!")
done
status=0
for ((k = 0; k < n; k++)); do
  # wait -n returns as soon as any process ends; stop the rest on the first failure.
  wait -n && continue
  status=$?
  echo "a process exited with status $status; stopping the others" >&2
  break
done
cleanup
wait || true
exit "$status"
