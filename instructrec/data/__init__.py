"""The canonical tables: column names, source readers, raw snapshots, the temporal split, synthetic data."""
