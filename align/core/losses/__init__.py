"""Losses as pure functions of per-token log-probs, masks and weights (no model code)."""
