"""A city's node: consent registry, agreements, datasets, and the query service brokers call."""
