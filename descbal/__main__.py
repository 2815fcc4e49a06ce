"""``python -m descbal``: the CLI (what ``torchrun -m descbal train ...`` runs on each rank)."""

from descbal.cli import main

if __name__ == "__main__":
    main()
