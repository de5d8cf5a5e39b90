"""Quantization: the canonical formats (CPU references in `formats`) that checkpoints store and kernels produce."""
