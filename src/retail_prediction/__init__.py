"""retail-prediction: train, package and serve a classifier of retail basket price sensitivity."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("retail-prediction")
except _metadata.PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
