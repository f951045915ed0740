"""Layer 0: the paper's facts and plumbing every layer may use; imports nothing of the package."""
