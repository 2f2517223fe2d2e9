"""compile_passes package."""
