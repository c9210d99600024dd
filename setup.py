"""The compiled parts of the package: the featurization's loops, the latent classes' estimation step, and the
inference protocol's binary string decoding (all other settings are in pyproject.toml)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("retail_prediction.features.kernel", ["src/retail_prediction/features/kernel.pyx"]),
     # the explanations' loops (features/explain.py); they cimport kernel.pxd's tables and per-line pieces
     Extension("retail_prediction.features.explain_kernel", ["src/retail_prediction/features/explain_kernel.pyx"]),
     # the latent classes' estimation step (training side, features/latent_fit.py)
     Extension("retail_prediction.features.latent_em", ["src/retail_prediction/features/latent_em.pyx"]),
     # the inference protocol's binary BYTES tensors, split and decoded (api/oip_tensors.py)
     Extension("retail_prediction.api.wire", ["src/retail_prediction/api/wire.pyx"])],
    compiler_directives={"language_level": 3},
))
