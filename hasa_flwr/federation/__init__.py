"""The federation on Flower: run config, strategy, phases, client handlers, checkpoints, secure statistics."""
