"""Loading what a server holds, once, and running it on uvicorn."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from retrieval.apps.api.app import create_app
from retrieval.apps.api.served import ModelQueue, ServedIndex
from retrieval.errors import RetrievalError


def load(
    paths: Sequence[str | Path],
    *,
    llm: str | Path | None = None,
    generation: bool = True,
    clip_checkpoint: str | Path | None = None,
    clip_model: str | None = None,
    token: str | None = None,
    cors: str | None = None,
    threads: int | None = None,
) -> FastAPI:
    """The app with its indexes, their text models and CLIP loaded now, so the first request is
    as fast as the others; `llm` is a model name or GGUF file (None: the default model), unless `generation`
    is False. `app.state.indexes` and `app.state.model` say what was loaded."""
    from retrieval.query.search import index_clip

    indexes = [ServedIndex(path, clip=index_clip(path, clip_checkpoint, clip_model)) for path in paths]
    names = [s.name for s in indexes]
    if len(set(names)) != len(names):
        raise RetrievalError(f"indexes must have different folder names, the API names them so: {', '.join(names)}")
    model = None
    if generation:
        from retrieval.tasks.generate.llm import Generator
        from retrieval.tasks.generate.rag import GenerateConfig

        model = ModelQueue(Generator(llm, max_ctx=GenerateConfig().max_ctx, n_threads=threads))
    return create_app(indexes, model=model, token=token, cors=cors)


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything loads: a port in use is a one-line error at
    once, not after seconds of loading and a URL that belongs to another server. Port 0 picks
    a free one (the socket says which)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise RetrievalError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another port") from None


def run(app: FastAPI, sock: socket.socket, *, workers: int = 32) -> None:
    """Serve on `sock` until interrupted; the sync routes run on a pool of `workers` threads."""
    import anyio.to_thread
    import uvicorn

    async def pool() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = workers

    app.router.on_startup.append(pool)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    finally:
        if app.state.model is not None:  # now, quietly: freed at exit, llama.cpp logs its buffers
            app.state.model.generator.close()
