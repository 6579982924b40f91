"""Transcriptomics: single-cell QC, clustering, annotation, spatial statistics."""
