"""Offline monitoring of the served model: the drift report of a payload log (`retail-prediction monitor`).

It reads what serving wrote and featurizes with serving's own Predictor, so it may import serving, artifact
and contract; serving never imports it (matplotlib stays out of the serving image)."""
