"""One trial: its budget and rungs, what it records, and the training run behind it."""
