"""Serving a packed model, independent of HTTP: the Predictor (featurization + ONNX Runtime), the model
manager (load, verify, warm up, swap, poll), scoring with micro-batching and a cache, settings and metrics."""
