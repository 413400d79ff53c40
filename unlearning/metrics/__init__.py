"""Metrics: invalidity, Inception Score, FID (on a named feature extractor), class shares
the redaction score and the worst-case attacks (gradient and inversion), all with one streaming shape (``update`` / ``compute`` /
``reset``) and fed by one sample-generation loop (``evaluate``)."""

from unlearning.metrics.attack import AttackSettings, latent_attack
from unlearning.metrics.base import StreamingMetric
from unlearning.metrics.class_balance import ClassShares, forgotten_classes, min_share_ratio, retained_shares
from unlearning.metrics.extractors import InceptionExtractor, classifier_extractor
from unlearning.metrics.fid import FID, FeatureStats, frechet_distance, reference_stats
from unlearning.metrics.filtered import Filtered
from unlearning.metrics.inversion import InversionSettings, inversion_attack
from unlearning.metrics.inception_score import InceptionScore, inception_score_from_log_probs
from unlearning.metrics.invalidity import Invalidity
from unlearning.metrics.redaction_score import redaction_score
from unlearning.metrics.sampling import evaluate, generate_in_batches, generated_batches

__all__ = [
    "AttackSettings", "latent_attack", "InversionSettings", "inversion_attack",
    "StreamingMetric", "ClassShares", "forgotten_classes", "min_share_ratio", "retained_shares", "InceptionExtractor", "classifier_extractor",
    "FID", "Filtered", "FeatureStats", "frechet_distance", "reference_stats", "InceptionScore",
    "inception_score_from_log_probs", "Invalidity", "redaction_score", "evaluate", "generate_in_batches",
    "generated_batches",
]
