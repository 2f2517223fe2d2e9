"""``python -m fusedkat ...`` (and ``torchrun ... -m fusedkat train ...``): the ``fusedkat`` console script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
