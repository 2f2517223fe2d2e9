"""cutlass_kernels package."""
