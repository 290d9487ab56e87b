#!/usr/bin/env bash
# N local processes on 127.0.0.1, each with D fake CPU devices (gloo collectives).
# Usage: launch/local_cpu.sh N D --config=configs/tiny.py --workdir=runs/local [--config.x=y ...]
# Tests the multi-host code path on one machine; logs go to <workdir>/process_<i>.log.
set -euo pipefail
N=${1:?number of processes}; D=${2:?devices per process}; shift 2
PORT=${PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
WORKDIR=$(printf '%s\n' "$@" | sed -n 's/^--workdir=//p' | tail -1); WORKDIR=${WORKDIR:-runs/local}
mkdir -p "$WORKDIR"
pids=()
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$D" python -m pdsn_jax.main "$@" \
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" \
    >"$WORKDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 20 "$WORKDIR/process_0.log"
exit $status
