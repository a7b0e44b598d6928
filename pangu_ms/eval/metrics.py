"""Scores for generated Chinese text (character level) and classification.

Characters are the unit for Chinese: punctuation and whitespace are removed before
counting (the usual CMRC/DuReader-style normalisation), Latin words stay as characters.
"""
from __future__ import annotations

import math
import unicodedata
from collections import Counter

import numpy as np


def chars(text: str) -> list[str]:
    """Characters of `text` without whitespace and punctuation (NFKC, lower-cased)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return [c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P")]


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised character sequences are equal, else 0.0."""
    return float(chars(prediction) == chars(reference))


def _overlap(prediction: str, reference: str) -> tuple[int, int, int]:
    p, r = Counter(chars(prediction)), Counter(chars(reference))
    return sum((p & r).values()), sum(p.values()), sum(r.values())


def char_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of character precision and recall (bag of characters)."""
    common, n_pred, n_ref = _overlap(prediction, reference)
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if common == 0:
        return 0.0
    precision, recall = common / n_pred, common / n_ref
    return 2 * precision * recall / (precision + recall)


def rouge1(prediction: str, reference: str) -> float:
    """ROUGE-1 F-measure over Chinese characters (unigram = character).

    With characters as unigrams this equals `char_f1`; both are reported because the paper's
    generation tasks cite ROUGE-1 and the reading-comprehension ones F1.
    """
    return char_f1(prediction, reference)


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    return math.exp(nll_sum / max(n_tokens, 1))


def accuracy(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to the reference label."""
    return float(np.mean([p == r for p, r in zip(predictions, references)])) if references else 0.0
