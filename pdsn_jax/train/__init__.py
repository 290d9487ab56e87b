"""The training skeleton: the step loop, train state and optimizers, data parallelism, multi-host, metrics."""
