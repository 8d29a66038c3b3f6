"""Backbones, embedding heads and the in-model preprocessing."""
