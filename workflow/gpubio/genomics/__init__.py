"""Genomics: reads, alignment, variants, variant effects."""
