"""The broker: authenticates partners, fans queries out to cities, verifies and merges their answers."""
