"""Reranking gateway: tokenize, prefilter on the CPU, score with a cross-encoder, rank."""
