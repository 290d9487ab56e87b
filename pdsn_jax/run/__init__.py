"""Run bookkeeping: the workdir's layout and lock, provenance records, atomic files, checkpoints, the stage registry."""
