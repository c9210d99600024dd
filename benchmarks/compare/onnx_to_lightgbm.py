"""Our model.onnx (a LightGBM multiclass model exported by onnxmltools) back to a LightGBM text model.

MLServer's LightGBM runtime loads a native LightGBM `model.bst`; our artifact ships only the ONNX export.
The ONNX `TreeEnsembleClassifier` holds every tree verbatim (split feature, float32 threshold, children,
leaf values, which side missing values take), so the same trees are written back in LightGBM's text
format. `convert()` checks the result against ONNX Runtime on the given features before returning.

    python benchmarks/compare/onnx_to_lightgbm.py MODEL_DIR/model.onnx OUT/model.bst
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def onnx_to_lightgbm_text(onnx_path: Path) -> str:
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    (node,) = [n for n in graph.node if n.op_type == "TreeEnsembleClassifier"]
    a = _attributes(node)
    if a.get("post_transform", b"NONE") != b"SOFTMAX" or a.get("base_values"):
        raise ValueError("expected a softmax multiclass ensemble without base values")
    n_classes = len(a["classlabels_int64s"])
    n_features = int(graph.input[0].type.tensor_type.shape.dim[1].dim_value)

    nodes: dict[int, dict[int, tuple]] = defaultdict(dict)
    for i, tree in enumerate(a["nodes_treeids"]):
        nodes[tree][a["nodes_nodeids"][i]] = (
            a["nodes_modes"][i], a["nodes_featureids"][i], a["nodes_values"][i], a["nodes_truenodeids"][i],
            a["nodes_falsenodeids"][i], a["nodes_missing_value_tracks_true"][i],
        )  # fmt: skip
    leaf_value: dict[tuple[int, int], float] = {}
    tree_class: dict[int, int] = {}
    for tree, nid, cls, w in zip(a["class_treeids"], a["class_nodeids"], a["class_ids"], a["class_weights"],
                                 strict=True):
        leaf_value[(tree, nid)] = leaf_value.get((tree, nid), 0.0) + w
        if tree_class.setdefault(tree, cls) != cls:
            raise ValueError(f"tree {tree} scores more than one class")
    trees = sorted(nodes)
    if [tree_class.get(t, t % n_classes) for t in trees] != [t % n_classes for t in trees]:
        raise ValueError("trees are not in LightGBM's class-interleaved order")

    out = [
        "tree", "version=v4", f"num_class={n_classes}", f"num_tree_per_iteration={n_classes}", "label_index=0",
        f"max_feature_idx={n_features - 1}", f"objective=multiclass num_class:{n_classes}",
        "feature_names=" + " ".join(f"f{i}" for i in range(n_features)),
        "feature_infos=" + " ".join(["[-1e+300:1e+300]"] * n_features), "",
    ]  # fmt: skip
    for t in trees:
        out += _tree_text(t, nodes[t], leaf_value)
    out += ["end of trees", "", "parameters:", f"[num_class: {n_classes}]", "end of parameters", "",
            "pandas_categorical:null", ""]
    return "\n".join(out)


def _tree_text(t: int, tree: dict[int, tuple], leaf_value: dict[tuple[int, int], float]) -> list[str]:
    internal = [nid for nid in sorted(tree) if tree[nid][0] != b"LEAF"]
    leaves = [nid for nid in sorted(tree) if tree[nid][0] == b"LEAF"]
    if not internal:
        return [f"Tree={t}", "num_leaves=1", "num_cat=0", "split_feature=", "split_gain=", "threshold=",
                "decision_type=", "left_child=", "right_child=", f"leaf_value={leaf_value[(t, leaves[0])]!r}",
                "leaf_weight=", "leaf_count=", "internal_value=", "internal_weight=", "internal_count=",
                "is_linear=0", "shrinkage=1", "", ""]
    index = {nid: i for i, nid in enumerate(internal)} | {nid: ~j for j, nid in enumerate(leaves)}
    feature, threshold, decision, left, right = [], [], [], [], []
    for nid in internal:
        mode, feat, value, true_id, false_id, missing_true = tree[nid]
        if mode != b"BRANCH_LEQ":
            raise ValueError(f"tree {t} node {nid}: unsupported mode {mode!r}")
        feature.append(str(feat))
        threshold.append(repr(float(np.float32(value))))
        # numerical split, missing values = NaN, default_left when ONNX sends missing values to `true`
        decision.append(str(8 + (2 if missing_true else 0)))
        left.append(str(index[true_id]))
        right.append(str(index[false_id]))
    n_int = len(internal)
    return [
        f"Tree={t}", f"num_leaves={len(leaves)}", "num_cat=0", "split_feature=" + " ".join(feature),
        "split_gain=" + " ".join(["0"] * n_int), "threshold=" + " ".join(threshold),
        "decision_type=" + " ".join(decision), "left_child=" + " ".join(left), "right_child=" + " ".join(right),
        "leaf_value=" + " ".join(repr(leaf_value[(t, nid)]) for nid in leaves),
        "leaf_weight=" + " ".join(["1"] * len(leaves)), "leaf_count=" + " ".join(["1"] * len(leaves)),
        "internal_value=" + " ".join(["0"] * n_int), "internal_weight=" + " ".join(["1"] * n_int),
        "internal_count=" + " ".join(["1"] * n_int), "is_linear=0", "shrinkage=1", "", "",
    ]  # fmt: skip


def convert(onnx_path: Path, out: Path, check_features: np.ndarray | None = None) -> float | None:
    """Write `out`; with `check_features`, return max |p_lightgbm - p_onnxruntime| over them."""
    out.write_text(onnx_to_lightgbm_text(onnx_path))
    if check_features is None:
        return None
    import lightgbm as lgb
    import onnxruntime as ort

    booster = lgb.Booster(model_file=str(out))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    p_onnx = session.run(["probabilities"], {"features": check_features.astype(np.float32)})[0]
    p_lgb = booster.predict(check_features.astype(np.float32))
    return float(np.abs(np.asarray(p_onnx, dtype=np.float64) - p_lgb).max())


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(sys.argv[2]), np.random.default_rng(0).random((1000, 27)) * 3))
