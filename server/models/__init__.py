"""Where weights come from: the catalog of published checkpoints, the demo profile, the hub adapter."""
