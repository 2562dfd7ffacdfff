"""Configs: YAML → typed dataclasses (loading), the shared sections, the recipes' configs and the registry that maps a
file's `recipe:` key to them. Torch-free by design (tests/align/test_layers.py checks it)."""
