"""What a finished search leaves: trials.parquet, the final stage, the report and its rank-fidelity statistics."""
