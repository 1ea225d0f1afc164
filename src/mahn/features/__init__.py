"""Item features: real image/text encoders, code features, and the feature store (docs/features.md)."""

from mahn.features.store import (
    MODALITIES,
    FeatureConfig,
    ModalityReport,
    extract_features,
    feature_summary,
    nearest_neighbours,
)

__all__ = ["MODALITIES", "FeatureConfig", "ModalityReport", "extract_features", "feature_summary",
           "nearest_neighbours"]
