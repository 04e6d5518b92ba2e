#!/usr/bin/env bash
# Cloud TPU VM launcher: create a TPU VM or pod slice, install siamjax on every worker, train
# with `--worker=all` (jax.distributed detects the pod by itself), stream logs, delete.
#
# Example:
#   export TPU_NAME=siamjax-v5e ZONE=us-west4-a PROJECT=my-project ACCELERATOR_TYPE=v5litepod-16
#   launch/tpu_vm.sh create
#   launch/tpu_vm.sh install
#   CONFIG=configs/tpu_pod.py WORKDIR=/gcs/my-bucket/runs/nli launch/tpu_vm.sh train --config.train.num_steps=20000
#   launch/tpu_vm.sh logs
#   launch/tpu_vm.sh delete
#   launch/tpu_vm.sh --dry-run train      # print the gcloud commands, run nothing
#
# Variables a user must set:
#   TPU_NAME, ZONE, PROJECT      where the TPU VM lives
#   ACCELERATOR_TYPE             e.g. v4-32, v5litepod-16, v5p-64 (for `create`)
#   CONFIG, WORKDIR              for `train`; WORKDIR must be a folder all workers share, e.g. a
#                                bucket mounted with gcsfuse at the same path on every worker
#                                (gs:// URLs are rejected)
# Optional:
#   RUNTIME_VERSION              TPU software version (default v2-alpha-tpuv5-lite)
#   PACKAGE                      what pip installs on the workers (default: "siamjax jax[tpu]")
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
verb="${1:-}"
if [[ -z "$verb" ]]; then sed -n '2,22p' "$0" >&2; exit 2; fi
shift
: "${TPU_NAME:?set TPU_NAME}"; : "${ZONE:?set ZONE}"; : "${PROJECT:?set PROJECT}"
runtime="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
package="${PACKAGE:-siamjax jax[tpu]}"
where=(--zone="$ZONE" --project="$PROJECT")

run() {
  if [[ $dry_run -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
ssh_all() { run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"; }

case "$verb" in
  create)
    : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE, e.g. v5litepod-16}"
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${where[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$runtime" ;;
  install)
    ssh_all "pip install -U ${package}" ;;
  train)
    : "${CONFIG:?set CONFIG, e.g. configs/tpu_pod.py}"; : "${WORKDIR:?set WORKDIR, e.g. /gcs/bucket/runs/x}"
    ssh_all "nohup python -m siamjax.cli train --config ${CONFIG} --workdir ${WORKDIR} $* > siamjax.log 2>&1 &" ;;
  logs)
    ssh_all "tail -n 200 -f siamjax.log" ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}" --quiet ;;
  *)
    echo "unknown verb '$verb' (create | install | train | logs | delete)" >&2; exit 2 ;;
esac
