"""Likes of one draft tweet from an open index: what `cli.py predict` and the HTTP API answer."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from retrieval.errors import RetrievalError
from retrieval.query.search import Searcher
from retrieval.tasks.likes.history import IndexHistory
from retrieval.tasks.likes.predict import LikesPrediction, PredictConfig, Query, predict_likes

if TYPE_CHECKING:
    from PIL import Image


class LikesPredictor:
    """An index's history opened once, so a server answers many predictions without reloading it."""

    def __init__(self, searcher: Searcher, config: PredictConfig | None = None) -> None:
        self.searcher = searcher
        self.history = IndexHistory(searcher.reader)
        self.config = config or PredictConfig()

    def predict(
        self,
        text: str,
        username: str,
        company: str | None = None,
        date: dt.datetime | None = None,
        image: Image.Image | None = None,
    ) -> LikesPrediction:
        """Estimate, 80% interval and the neighbours that drove it, from tweets before `date`;
        with an image (and an index with CLIP vectors) its image neighbours join the text ones."""
        if not text or not text.strip():
            raise RetrievalError("the tweet text is empty")
        image_vector = self.searcher.image_vector(image) if image is not None else None
        vector = self.searcher.embedder.encode([text.strip()])
        query = Query(username, company, date)
        return predict_likes(self.history, vector, [query], self.config, images=[image_vector])[0]
