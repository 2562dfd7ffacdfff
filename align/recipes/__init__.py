"""One file per method, read top to bottom. A recipe imports align.config, align.core, align.rollout and align.eval,
never another recipe."""
