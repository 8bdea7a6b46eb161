"""Data: sources (nih, dicom, folder, chestmnist), the built-in phantom, prepare, and reading."""
