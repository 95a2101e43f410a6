"""analyze-sentiment: classify text synchronously (and, through /async-function, by callback).

POST ``{"text": "..."}`` → ``{"label", "score", "model"}``;
POST ``{"texts": [... up to 32]}`` → a JSON array of those, in order.
"""

from __future__ import annotations

import flask

from minitwitter import sentiment
from minitwitter.http import endpoint, parse_json, respond


@endpoint("analyze-sentiment", ["POST"], root_only=True)
def handle(request: flask.Request) -> flask.Response:
    texts, single = sentiment.parse_texts(parse_json(request))
    results = [{"label": v.label, "score": v.score, "model": v.model}
               for v in sentiment.analyze(texts)]
    return respond(200, results[0] if single else results)
