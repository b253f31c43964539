"""``python -m medconvnext`` (also what ``torchrun -m medconvnext`` runs)."""

from medconvnext.cli.main import main

if __name__ == "__main__":
    main()
