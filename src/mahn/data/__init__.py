"""Prepared datasets: reading one (`Dataset`), making one (`prepare`), its stored negatives and its summary.

A prepared dataset is a folder of Parquet tables, `.npy` negatives and features, and a manifest
(docs/data-format.md). Training and evaluation only read it, through `Dataset`, with pyarrow and
numpy; Polars is needed only to prepare it.
"""

from mahn.data.dataset import MIN_EVAL_LENGTH, SCHEMA_VERSION, SPLITS, Dataset, EvalSet, left_padded, range_indices

__all__ = ["MIN_EVAL_LENGTH", "SCHEMA_VERSION", "SPLITS", "Dataset", "EvalSet", "left_padded", "range_indices"]
