#!/usr/bin/env bash
# SLURM GPU cluster: one process per node, all GPUs of the node per process.
# Usage: sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh \
#          --config=configs/paper.py --workdir=/shared/runs/paper [--config.x=y ...]
# jax.distributed.initialize() reads SLURM's variables (pdsn_jax/distributed.py);
# the workdir must be on a file system every node sees (orbax writes one checkpoint).
#SBATCH --job-name=pdsn_jax
#SBATCH --ntasks-per-node=1
#SBATCH --output=pdsn_jax-%j.log
set -euo pipefail
# pip install -r requirements.txt with the jax line replaced by jax[cuda12]==0.10.2
srun --kill-on-bad-exit=1 python -m pdsn_jax.main "$@"
