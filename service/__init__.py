"""The HTTP service (FastAPI): an entry point like flows/, beside them."""
