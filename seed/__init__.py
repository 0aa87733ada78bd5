"""Synthetic, deterministic demo population."""
