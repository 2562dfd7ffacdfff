"""Hallucination evaluation: metrics (pure functions), benchmark runners, and the checkpoint report."""
