"""Learning a model (candidates, choice on later weeks, ONNX export), evaluating it and scoring files with
a packed model. Imports the training stack; serving never imports this package."""
