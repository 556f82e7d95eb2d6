"""The HTTP API and the web page: `tweet-retrieval serve --index DIR` (FastAPI on uvicorn).

`app.py` maps routes to the same library calls the CLI makes, `schemas.py` is the JSON contract,
`served.py` keeps indexes and models loaded (and reloads an index that `index add` changed),
`static/` is the page.
"""
