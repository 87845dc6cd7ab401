"""Evaluation: lm-eval benchmarks and perplexity of a finished model."""
