#!/usr/bin/env bash
# Cloud TPU pod slice: the same command on every worker; jax finds its peers itself.
# Usage: launch/tpu_pod.sh TPU_NAME ZONE --config=configs/paper.py --workdir=gs://bucket/runs/paper
# Installs the pinned requirements (jax[tpu]) and runs from a copy of this repo on each worker.
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; shift 2
REPO_DIR=${REPO_DIR:-pdsn_jax}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all . "$TPU:$REPO_DIR"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="\
  cd $REPO_DIR && sed 's/^jax==/jax[tpu]==/' requirements.txt > /tmp/req-tpu.txt && \
  pip install -q -r /tmp/req-tpu.txt && python -m pdsn_jax.main$ARGS"
