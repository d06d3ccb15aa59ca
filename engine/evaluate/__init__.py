"""Classifier training on a training mix, tested on the held-out real split.

The measure of a synthetic selection's training value: train the same classifier recipe on
real, synthetic and real + synthetic mixes and compare top-1 on the same real test images.
"""

from engine.evaluate.augment import BatchAugment
from engine.evaluate.classifier import build_classifier, count_parameters
from engine.evaluate.classifier_training import check_mixing, mix_arrays, train_classifier
from engine.evaluate.metrics import confusion_matrix, per_class_accuracy, topk_accuracy

__all__ = [
    "BatchAugment",
    "build_classifier",
    "check_mixing",
    "confusion_matrix",
    "count_parameters",
    "mix_arrays",
    "per_class_accuracy",
    "topk_accuracy",
    "train_classifier",
]
