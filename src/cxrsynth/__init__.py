"""cxrsynth."""
