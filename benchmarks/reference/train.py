"""Fit the reference's RandomForest on precomputed basket features and save it with joblib.

    python train.py FEATURES.npz rf.joblib      (FEATURES.npz: X float32 [n, n_features], y int, feature_names)

scikit-learn defaults (100 trees, unlimited depth) as a user would start, random_state fixed.
"""

import sys

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier

data = np.load(sys.argv[1])
X = pd.DataFrame(data["X"], columns=[str(n) for n in data["feature_names"]])
forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=-1).fit(X, data["y"])
forest.set_params(n_jobs=None)  # serve single-threaded, as the other systems do per worker
joblib.dump(forest, sys.argv[2])
print(f"trained on {X.shape[0]} baskets, {sum(t.tree_.node_count for t in forest.estimators_)} nodes")
