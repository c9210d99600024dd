"""The compiled part of the package: the featurization's loops (all other settings are in pyproject.toml)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("retail_prediction.features.kernel", ["src/retail_prediction/features/kernel.pyx"])],
    compiler_directives={"language_level": 3},
))
