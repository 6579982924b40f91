"""Histopathology: whole-slide images -> tissue -> tiles -> vision-language embeddings -> zero-shot labels."""
