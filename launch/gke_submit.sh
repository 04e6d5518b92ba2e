#!/usr/bin/env bash
# Fill launch/gke_jobset.yaml's ${...} variables and submit it with kubectl.
#
# Example:
#   IMAGE=us-docker.pkg.dev/my-project/siamjax/train:latest NUM_HOSTS=4 \
#   CONFIG=configs/tpu_pod.py WORKDIR=/gcs/runs/nli \
#   NODE_SELECTOR_KEY=cloud.google.com/gke-tpu-accelerator NODE_SELECTOR_VALUE=tpu-v5-lite-podslice \
#   ACCELERATOR_RESOURCE=google.com/tpu ACCELERATORS_PER_HOST=4 launch/gke_submit.sh
#   ... launch/gke_submit.sh --dry-run   # print the rendered manifest and the kubectl command
#
# Variables a user must set: IMAGE, NUM_HOSTS, CONFIG, WORKDIR, NODE_SELECTOR_KEY,
#   NODE_SELECTOR_VALUE, ACCELERATOR_RESOURCE, ACCELERATORS_PER_HOST.
# Optional: JOB_NAME (default siamjax-train).
# WORKDIR must be a folder every pod sees (e.g. a bucket mounted through the GCS FUSE CSI
# driver; add the volume to gke_jobset.yaml); gs:// URLs are rejected.
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
export JOB_NAME="${JOB_NAME:-siamjax-train}"
for var in IMAGE NUM_HOSTS CONFIG WORKDIR NODE_SELECTOR_KEY NODE_SELECTOR_VALUE ACCELERATOR_RESOURCE \
           ACCELERATORS_PER_HOST; do
  if [[ -z "${!var:-}" ]]; then echo "set $var (see the header of $0)" >&2; exit 2; fi
done
template="$(dirname "$0")/gke_jobset.yaml"
manifest="$(sed -e "s|\${JOB_NAME}|${JOB_NAME}|g" -e "s|\${IMAGE}|${IMAGE}|g" \
  -e "s|\${NUM_HOSTS}|${NUM_HOSTS}|g" -e "s|\${CONFIG}|${CONFIG}|g" -e "s|\${WORKDIR}|${WORKDIR}|g" \
  -e "s|\${NODE_SELECTOR_KEY}|${NODE_SELECTOR_KEY}|g" -e "s|\${NODE_SELECTOR_VALUE}|${NODE_SELECTOR_VALUE}|g" \
  -e "s|\${ACCELERATOR_RESOURCE}|${ACCELERATOR_RESOURCE}|g" \
  -e "s|\${ACCELERATORS_PER_HOST}|${ACCELERATORS_PER_HOST}|g" "$template")"
if [[ $dry_run -eq 1 ]]; then
  printf '%s\n' "$manifest"
  echo "kubectl apply -f -"
  exit 0
fi
printf '%s\n' "$manifest" | kubectl apply -f -
