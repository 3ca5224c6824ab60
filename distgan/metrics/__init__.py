"""Evaluation metrics: FID, KID, IS, precision/recall on Inception or domain-classifier features."""

from distgan.metrics.domain import (
    DomainClassifier,
    DomainFeatures,
    domain_features,
    load_domain_classifier,
    save_domain_classifier,
    train_domain_classifier,
)
from distgan.metrics.features import FeatureExtractor, extract_features, to_uint8
from distgan.metrics.inception import InceptionFeatures, InceptionWeightsError, find_inception_weights
from distgan.metrics.reference import reference_stats
from distgan.metrics.scores import FeatureStats, fid, inception_score, kid, precision_recall

__all__ = [
    "DomainClassifier",
    "DomainFeatures",
    "FeatureExtractor",
    "FeatureStats",
    "InceptionFeatures",
    "InceptionWeightsError",
    "domain_features",
    "extract_features",
    "fid",
    "find_inception_weights",
    "inception_score",
    "kid",
    "load_domain_classifier",
    "precision_recall",
    "reference_stats",
    "save_domain_classifier",
    "to_uint8",
    "train_domain_classifier",
]
