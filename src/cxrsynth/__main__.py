"""``python -m cxrsynth`` (also what ``accelerate launch -m cxrsynth`` runs)."""

from cxrsynth.cli import main

if __name__ == "__main__":
    main()
