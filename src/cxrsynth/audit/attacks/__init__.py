"""Built-in attacks: importing a module registers its attacks (one line per module below)."""

from cxrsynth.audit.attacks import loss, recon, secmi, pia, nn, blind, lira, rmia, sima, gsa  # noqa: F401

__all__ = ["loss", "recon", "secmi", "pia", "nn", "blind", "sima", "gsa"]
