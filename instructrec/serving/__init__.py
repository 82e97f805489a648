"""Answering a request: the ONNX export and its variants, the recommender, lists and reasons, sessions."""
