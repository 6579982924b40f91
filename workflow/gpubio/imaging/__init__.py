"""Imaging: registration, segmentation, per-cell features."""
