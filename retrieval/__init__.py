"""Retrieval-centric vector search over brand tweets: index, similar tweets, likes, generation."""

__version__ = "0.1.0"
