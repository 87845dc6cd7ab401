"""Data: documents from sources, tokenizers, packed blocks, streams, token stores, batches."""
