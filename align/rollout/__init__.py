"""The policy as a rollout engine and a labeler for data_builders, and the build-data entry points that need it."""
