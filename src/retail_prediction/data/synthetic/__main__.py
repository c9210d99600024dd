"""`python -m retail_prediction.data.synthetic`: see `write.main`."""

from .write import main

main()
