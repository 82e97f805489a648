"""Ray: a local or joined cluster, distributed training and batch inference (the only package that imports Ray)."""
