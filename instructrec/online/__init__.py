"""After deployment: feedback events and fine-tuning examples, A/B tests, their sequential looks, erasure."""
