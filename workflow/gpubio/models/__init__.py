"""Staging model weights for offline clusters."""
