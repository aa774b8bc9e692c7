"""What engines are built from: a registry per model, the on-disk engine cache, CUDA graphs and TensorRT."""
