"""FiftyOne-facing stages: each takes a sample collection, writes fields and returns a RunSummary."""
