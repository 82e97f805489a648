"""A run's preparation (split, examples, cases) and the training loops."""
