"""What every method shares: models, data encoding and collators, response log-probs, generation, trainer mixins,
and the losses as pure functions. Imports align.config and the leaf packages only."""
