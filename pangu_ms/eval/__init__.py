"""Few-shot evaluation (the PanGu-alpha perplexity method), generation metrics, held-out perplexity."""
