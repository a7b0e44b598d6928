"""Non-neural reference accuracies for the built-in sentiment task, to put fine-tuning in context.

Two classic text classifiers over character n-grams of the same review text the task scores
(the first `max_text_chars` characters, 180 in ascend_configs/tasks/sentiment.yaml):
- `naive_bayes`: binarized multinomial naive Bayes (each distinct character 1-2-gram of a review
  counts once), add-one smoothing (NumPy only);
- `tfidf_logreg`: logistic regression (C=4) on sublinear TF-IDF character 1-3-grams seen in at
  least two reviews. Needs scikit-learn, which is not a project dependency: without it the line
  says so and is skipped.

Two evaluations, one JSON line per (split, classifier):
- `dev`: the 1,000-review dev split the fine-tuning recipes were chosen on (the first 1,000 rows
  of a seed-7 permutation of the train split), trained on the rest of the train split;
- `test`: the task's fixed 1,000-review test split, trained on the whole train split.

    python bench/sentiment_baselines.py
    python bench/sentiment_baselines.py --max-chars 0      # whole reviews
"""
from __future__ import annotations


# bench/tokenizer_speed.py would shadow the stdlib module that scikit-learn imports: keep bench/ off the path

import argparse
import json
import time
from collections import Counter

import numpy as np  # noqa: E402


def ngrams(text: str, n_max: int) -> set[str]:
    return {text[i:i + n] for n in range(1, n_max + 1) for i in range(len(text) - n + 1)}


def naive_bayes(train: list[tuple[str, str]], test: list[tuple[str, str]]) -> float:
    """Binarized multinomial NB over the distinct character 1-2-grams of each text -> accuracy."""
    labels = sorted({y for _, y in train})
    counts = {y: Counter() for y in labels}
    for x, y in train:
        counts[y].update(ngrams(x, 2))
    vocab = len(set().union(*counts.values()))
    prior = Counter(y for _, y in train)
    totals = {y: sum(counts[y].values()) for y in labels}
    right = 0
    for x, y in test:
        grams = ngrams(x, 2)
        score = {c: np.log(prior[c]) + sum(np.log((counts[c][g] + 1) / (totals[c] + vocab)) for g in grams)
                 for c in labels}
        right += max(score, key=score.get) == y
    return right / len(test)


def tfidf_logreg(train: list[tuple[str, str]], test: list[tuple[str, str]]) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    features = vec.fit_transform([x for x, _ in train])
    model = LogisticRegression(C=4.0, max_iter=2000).fit(features, [y for _, y in train])
    pred = model.predict(vec.transform([x for x, _ in test]))
    return float(np.mean([p == y for p, (_, y) in zip(pred, test)]))


def splits(max_chars: int) -> dict[str, tuple[list, list]]:
    from pangu_ms.data.labelled import load_split

    def rows(split: str) -> list[tuple[str, str]]:
        return [(e.text[:max_chars] if max_chars else e.text, e.label)
                for e in load_split("shopping_reviews", split, text_field="text", label_field="label")]

    train, test = rows("train"), rows("test")
    order = np.random.default_rng(7).permutation(len(train))
    dev = [train[i] for i in order[:1000]]
    rest = [train[i] for i in order[1000:]]
    return {"dev": (rest, dev), "test": (train, test)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-chars", type=int, default=None,
                   help="characters of each review (default: the sentiment task's max_text_chars; 0: whole reviews)")
    args = p.parse_args(argv)
    if args.max_chars is None:
        from pangu_ms.eval.tasks import load_task

        args.max_chars = load_task("sentiment").max_text_chars
    for split, (train, test) in splits(args.max_chars).items():
        for name, fit in (("naive_bayes", naive_bayes), ("tfidf_logreg", tfidf_logreg)):
            line = {"split": split, "classifier": name, "max_chars": args.max_chars,
                    "train": len(train), "test": len(test)}
            t0 = time.perf_counter()
            try:
                line["accuracy"] = round(fit(train, test), 4)
            except ModuleNotFoundError as e:
                if e.name != "sklearn":
                    raise
                line["skipped"] = "scikit-learn is not installed (not a project dependency): pip install scikit-learn"
            line["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
