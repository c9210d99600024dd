"""The reference forest's answers computed in process (the expected answers of the load driver).

    python offline.py rf.joblib FEATURES.npz OUT.json    (FEATURES.npz: X float32 [n, n_features], feature_names)
"""

import json
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

forest = joblib.load(sys.argv[1])
data = np.load(sys.argv[2])
X = pd.DataFrame(data["X"], columns=[str(n) for n in data["feature_names"]])
Path(sys.argv[3]).write_text(json.dumps({
    "proba": forest.predict_proba(X).tolist(), "trees": len(forest.estimators_),
    "nodes": int(sum(t.tree_.node_count for t in forest.estimators_)),
}))
