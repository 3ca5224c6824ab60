"""Evaluation metrics: FID, KID, IS, precision/recall on Inception or domain-classifier features."""

from distgan.metrics.domain import (
    DomainClassifier,
    DomainFeatures,
    default_domain_dir,
    domain_features,
    find_domain_model,
    load_domain_classifier,
    save_domain_classifier,
    train_domain_classifier,
)
from distgan.metrics.features import FeatureExtractor, extract_features
from distgan.metrics.inception import InceptionFeatures, InceptionWeightsError, find_inception_weights
from distgan.metrics.evaluate import evaluate, format_table
from distgan.metrics.generated import OnnxSource, TorchSource, open_source
from distgan.metrics.reference import reference_features, reference_stats
from distgan.metrics.scores import FeatureStats, fid, inception_score, kid, precision_recall

__all__ = [
    "DomainClassifier",
    "DomainFeatures",
    "FeatureExtractor",
    "FeatureStats",
    "InceptionFeatures",
    "InceptionWeightsError",
    "OnnxSource",
    "TorchSource",
    "default_domain_dir",
    "domain_features",
    "evaluate",
    "extract_features",
    "fid",
    "find_domain_model",
    "find_inception_weights",
    "format_table",
    "inception_score",
    "kid",
    "load_domain_classifier",
    "open_source",
    "precision_recall",
    "reference_features",
    "reference_stats",
    "save_domain_classifier",
    "train_domain_classifier",
]
