"""Tree ensembles as plain numpy arrays, evaluated for a whole batch at once.

scikit-learn's random forests and isolation forests are exported to `TreeArrays` (one flat node
table for all trees), stored in an `.npz` file and evaluated here without scikit-learn and
without unpickling. Evaluation follows scikit-learn's own rules so scores match it exactly:
inputs are rounded to float32 first (scikit-learn's trees do the same), a sample goes left when
its value is <= the node's float64 threshold, and a missing value (NaN) goes where the node's
`missing_go_to_left` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# scikit-learn marks a leaf with child -1.
LEAF = -1


@dataclass(frozen=True)
class TreeArrays:
    """All trees' nodes in one table; node ids are global, children of a leaf are -1.

    `node_value` is what a node predicts: the fraction of class 1 for a classification forest;
    for an isolation forest, the expected path length of a sample reaching it, depth (edges)
    + c(n_node_samples). `leaf_score` is what a leaf adds to the ensemble sum: the class-1
    fraction, or the isolation path length h computed in scikit-learn's operation order.
    """

    roots: IntArray
    children_left: IntArray
    children_right: IntArray
    feature: IntArray
    threshold: FloatArray
    missing_go_to_left: BoolArray
    node_value: FloatArray
    leaf_score: FloatArray

    @property
    def tree_count(self) -> int:
        return len(self.roots)

    @property
    def node_count(self) -> int:
        return len(self.children_left)

    def as_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "roots": self.roots,
            "children_left": self.children_left,
            "children_right": self.children_right,
            "feature": self.feature,
            "threshold": self.threshold,
            "missing_go_to_left": self.missing_go_to_left,
            "node_value": self.node_value,
            "leaf_score": self.leaf_score,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]], feature_count: int) -> TreeArrays:
        """Rebuild from stored arrays; raises ValueError naming the first inconsistent array."""
        try:
            trees = cls(
                roots=np.asarray(arrays["roots"], dtype=np.int64),
                children_left=np.asarray(arrays["children_left"], dtype=np.int64),
                children_right=np.asarray(arrays["children_right"], dtype=np.int64),
                feature=np.asarray(arrays["feature"], dtype=np.int64),
                threshold=np.asarray(arrays["threshold"], dtype=np.float64),
                missing_go_to_left=np.asarray(arrays["missing_go_to_left"], dtype=np.bool_),
                node_value=np.asarray(arrays["node_value"], dtype=np.float64),
                leaf_score=np.asarray(arrays["leaf_score"], dtype=np.float64),
            )
        except KeyError as exc:
            raise ValueError(f"array {exc.args[0]!r} is missing") from exc
        trees.validate(feature_count)
        return trees

    def validate(self, feature_count: int) -> None:
        """Check shapes and references so evaluation can never index out of bounds or loop."""
        nodes = self.node_count
        for name, array in self.as_arrays().items():
            if array.ndim != 1:
                raise ValueError(f"array {name!r} must be one-dimensional, has shape {array.shape}")
            if name != "roots" and len(array) != nodes:
                raise ValueError(f"array {name!r} has {len(array)} entries, expected {nodes}")
        if self.tree_count == 0:
            raise ValueError("no trees")
        if np.any((self.roots < 0) | (self.roots >= nodes)):
            raise ValueError("array 'roots' refers to nodes outside the table")
        is_leaf = self.children_left == LEAF
        if np.any(is_leaf != (self.children_right == LEAF)):
            raise ValueError("a node has exactly one child")
        inner = ~is_leaf
        ids = np.arange(nodes)
        for name, children in (
            ("children_left", self.children_left),
            ("children_right", self.children_right),
        ):
            child = children[inner]
            # Children come after their parent, which also rules out cycles.
            if np.any((child <= ids[inner]) | (child >= nodes)):
                raise ValueError(f"array {name!r} refers to invalid nodes")
        if np.any((self.feature[inner] < 0) | (self.feature[inner] >= feature_count)):
            raise ValueError(f"array 'feature' refers to features outside 0..{feature_count - 1}")
        if not np.all(np.isfinite(self.node_value)) or not np.all(
            np.isfinite(self.leaf_score[is_leaf])
        ):
            raise ValueError("node values must be finite")

    def leaves(self, inputs: FloatArray) -> IntArray:
        """The leaf each row reaches in each tree, shape (rows, trees)."""
        leaves, _ = self._walk(inputs, feature_count=None)
        return leaves

    def leaves_and_path_contributions(
        self, inputs: FloatArray, feature_count: int
    ) -> tuple[IntArray, FloatArray]:
        """Leaves, and per row and feature the sum over trees of node_value(child) - node_value
        (parent) along the path, attributed to the parent's split feature (Saabas)."""
        leaves, contributions = self._walk(inputs, feature_count=feature_count)
        assert contributions is not None
        return leaves, contributions

    def _walk(
        self, inputs: FloatArray, feature_count: int | None
    ) -> tuple[IntArray, FloatArray | None]:
        # scikit-learn's trees compare the float32-rounded input with a float64 threshold.
        values = np.asarray(inputs, dtype=np.float64).astype(np.float32)
        rows, trees = len(values), self.tree_count
        node = np.tile(self.roots, rows)
        row_of = np.repeat(np.arange(rows, dtype=np.int64), trees)
        contributions = None
        if feature_count is not None:
            contributions = np.zeros(rows * feature_count, dtype=np.float64)
        active = np.flatnonzero(self.children_left[node] != LEAF)
        has_missing = bool(np.isnan(values).any())
        # One iteration per tree level, each over every (row, tree) pair still inside a tree.
        while active.size:
            current = node[active]
            split_feature = self.feature[current]
            x = values[row_of[active], split_feature]
            go_left = x <= self.threshold[current]
            if has_missing:
                go_left |= np.isnan(x) & self.missing_go_to_left[current]
            child = np.where(go_left, self.children_left[current], self.children_right[current])
            if contributions is not None and feature_count is not None:
                delta = self.node_value[child] - self.node_value[current]
                contributions += np.bincount(
                    row_of[active] * feature_count + split_feature,
                    weights=delta,
                    minlength=rows * feature_count,
                )
            node[active] = child
            active = active[self.children_left[child] != LEAF]
        leaves = node.reshape(rows, trees)
        if contributions is None or feature_count is None:
            return leaves, None
        return leaves, contributions.reshape(rows, feature_count)

    def leaf_score_sum(self, leaves: IntArray) -> FloatArray:
        """Sum of leaf scores over trees, added tree by tree as scikit-learn does."""
        total = np.zeros(leaves.shape[0], dtype=np.float64)
        for tree in range(leaves.shape[1]):
            total += self.leaf_score[leaves[:, tree]]
        return total


def average_path_length(node_samples: npt.ArrayLike) -> FloatArray:
    """c(n): average path length of an unsuccessful binary-search-tree search among n points.

    The same formula and operation order as scikit-learn's IsolationForest, so scores agree
    bit for bit: 0 for n <= 1, 1 for n == 2, else 2 (ln(n - 1) + gamma) - 2 (n - 1) / n.
    """
    n = np.asarray(node_samples, dtype=np.float64).reshape(-1)
    result = np.zeros(n.shape)
    middle = n > 2
    result[n == 2] = 1.0
    result[middle] = (
        2.0 * (np.log(n[middle] - 1.0) + np.euler_gamma) - 2.0 * (n[middle] - 1.0) / n[middle]
    )
    return result


def _concatenate(per_tree: list[dict[str, npt.NDArray[Any]]]) -> TreeArrays:
    offsets = np.cumsum([0] + [len(tree["children_left"]) for tree in per_tree[:-1]])
    parts: dict[str, list[npt.NDArray[Any]]] = {name: [] for name in per_tree[0]}
    for offset, tree in zip(offsets.tolist(), per_tree, strict=True):
        for name, array in tree.items():
            if name in ("children_left", "children_right"):
                array = np.where(array == LEAF, LEAF, array + offset)
            parts[name].append(array)
    joined = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    return TreeArrays(
        roots=offsets.astype(np.int64),
        children_left=joined["children_left"].astype(np.int64),
        children_right=joined["children_right"].astype(np.int64),
        feature=joined["feature"].astype(np.int64),
        threshold=joined["threshold"].astype(np.float64),
        missing_go_to_left=joined["missing_go_to_left"].astype(np.bool_),
        node_value=joined["node_value"].astype(np.float64),
        leaf_score=joined["leaf_score"].astype(np.float64),
    )


def _structure(tree: Any, feature_map: IntArray) -> dict[str, npt.NDArray[Any]]:
    left = np.asarray(tree.children_left, dtype=np.int64)
    is_leaf = left == LEAF
    local_feature = np.asarray(tree.feature, dtype=np.int64)
    # Leaves carry feature -2 in scikit-learn; 0 keeps the column valid and is never read.
    feature = np.where(is_leaf, 0, feature_map[np.where(is_leaf, 0, local_feature)])
    return {
        "children_left": left,
        "children_right": np.asarray(tree.children_right, dtype=np.int64),
        "feature": feature,
        "threshold": np.asarray(tree.threshold, dtype=np.float64),
        "missing_go_to_left": np.asarray(tree.missing_go_to_left, dtype=np.bool_),
    }


def export_random_forest(forest: Any) -> TreeArrays:
    """A fitted binary `RandomForestClassifier` (classes 0 and 1) as `TreeArrays`."""
    classes = [int(c) for c in forest.classes_]
    if classes != [0, 1]:
        raise ValueError(f"expected a binary forest with classes [0, 1], got {classes}")
    feature_map = np.arange(forest.n_features_in_, dtype=np.int64)
    per_tree = []
    for estimator in forest.estimators_:
        tree = estimator.tree_
        arrays = _structure(tree, feature_map)
        # scikit-learn stores per-node class fractions; a tree predicts its leaf's fraction.
        fraud_share = np.asarray(tree.value[:, 0, 1], dtype=np.float64)
        arrays["node_value"] = fraud_share
        arrays["leaf_score"] = fraud_share
        per_tree.append(arrays)
    return _concatenate(per_tree)


def export_isolation_forest(forest: Any) -> TreeArrays:
    """A fitted `IsolationForest` as `TreeArrays`, leaf_score = the leaf's path length h(x)."""
    feature_count = int(forest.n_features_in_)
    subsampled = int(forest._max_features) != feature_count
    per_tree = []
    for estimator, features in zip(forest.estimators_, forest.estimators_features_, strict=True):
        tree = estimator.tree_
        feature_map = (
            np.asarray(features, dtype=np.int64)
            if subsampled
            else np.arange(feature_count, dtype=np.int64)
        )
        arrays = _structure(tree, feature_map)
        average = average_path_length(tree.n_node_samples)
        path_lengths = tree.compute_node_depths()
        # Path length through a node: its depth in edges plus c(n) for what is left below it.
        arrays["node_value"] = (path_lengths - 1) + average
        # Same expression and order as scikit-learn: decision path length + c(n) - 1.
        arrays["leaf_score"] = path_lengths + average - 1.0
        per_tree.append(arrays)
    return _concatenate(per_tree)
