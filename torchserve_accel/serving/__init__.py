"""The TorchServe side shared by every model: a worker imports this and one model package, nothing else."""
