"""The method: networks from the config, the recognition step, FDMs, stage I's rules, a finished run's networks applied."""
