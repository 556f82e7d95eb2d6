"""The FastAPI app: each route parses its JSON, calls the library as the CLI does, and answers in
the contract of schemas.py; every error is JSON `{error, detail}` with its status."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
import logging
import queue
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from retrieval.apps.api.schemas import (
    INT64,
    AudienceIn,
    AudienceOut,
    ErrorOut,
    GenerateIn,
    HitOut,
    IndexOut,
    PredictIn,
    PredictOut,
    ProfileIn,
    ProfileOut,
    RecommendIn,
    RecommendOut,
    SimilarIn,
    SimilarOut,
    Tweet,
)
from retrieval.apps.api.served import Busy, ModelQueue, ServedIndex
from retrieval.errors import DataError, IndexCorrupt, IndexLocked, IndexNotFound, ModelMissing, RetrievalError
from retrieval.index.filters import Filters, whole_day
from retrieval.index.profiles import Profile, ProfileStore
from retrieval.io.media import decode_image
from retrieval.query.ranking import Ranking
from retrieval.tasks.recommend.recommend import add_to_profile, audience, recommend

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 10 * 2**20
"""An uploaded image, decoded from base64; the request around it may be a third larger."""
STATUS = ((IndexNotFound, 404), (IndexLocked, 409), (DataError, 422), (IndexCorrupt, 503), (ModelMissing, 503))
"""The status of each kind of library error; any other RetrievalError is the request's fault (400)."""
GENERATION = ThreadPoolExecutor(1, thread_name_prefix="generate")
"""Streamed generations run here: one at a time (the model's queue sees to it), on one thread,
so they hold one DuckDB cursor per index, not one per request."""
ERRORS = {400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


def _error(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _naive(when: dt.datetime | None) -> dt.datetime | None:
    """Dates in the index are naive UTC: an aware value is converted, a naive one taken as UTC."""
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when is not None and when.tzinfo else when


def _image(data: str) -> Any:
    """A base64 image (with or without a data: URL prefix) as a PIL image."""
    try:
        raw = base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError):
        raise RetrievalError("image: not valid base64") from None
    return decode_image(raw, max_bytes=MAX_IMAGE_BYTES)


def create_app(
    indexes: Sequence[ServedIndex],
    *,
    model: ModelQueue | None = None,
    token: str | None = None,
    cors: str | None = None,
) -> FastAPI:
    """The app over indexes and models that are already loaded (`serve` loads them once)."""
    served = {s.name: s for s in indexes}
    app = FastAPI(title="tweet-retrieval", version="1", summary="Similar tweets, likes prediction, generation.")
    app.state.indexes, app.state.model = list(indexes), model
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=MAX_IMAGE_BYTES * 4 // 3 + 2**16)
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[cors], allow_methods=["*"], allow_headers=["*"])

    def authorised(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong token: send Authorization: Bearer TOKEN")

    def index_of(name: str) -> ServedIndex:
        if name not in served:
            raise IndexNotFound(f"no index named {name!r}; served: {', '.join(served)}")
        return served[name]

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorised)], responses=ERRORS)

    @v1.get("/indexes", response_model=list[IndexOut])
    def list_indexes() -> list[IndexOut]:
        return [_describe(s) for s in served.values()]

    @v1.get("/indexes/{name}", response_model=IndexOut)
    def describe_index(name: str) -> IndexOut:
        return _describe(index_of(name))

    @v1.get("/tweets/{index}/{tweet_id}", response_model=Tweet)
    def tweet(index: str, tweet_id: Annotated[int, PathParam(ge=-INT64, le=INT64)]) -> Tweet:
        row = index_of(index).searcher.reader.find_tweet(tweet_id)
        if row is None:
            raise HTTPException(404, f"{index}: no tweet with id {tweet_id}")
        return Tweet.of(row)

    @v1.post("/similar", response_model=SimilarOut)
    def similar(body: SimilarIn) -> SimilarOut:
        index = index_of(body.index)
        if sum(x is not None for x in (body.text, body.id, body.image)) != 1:
            raise HTTPException(400, "give one of text, id or image")
        f = body.filters
        filters = Filters(f.username, f.company, _naive(f.since), whole_day(_naive(f.until)), f.min_likes)
        searcher = index.searcher
        if body.min_score is not None and body.text is None:
            raise HTTPException(400, "min_score goes with a text query")
        ranking = Ranking(body.rank, body.collapse, body.half_life_days)
        if body.image is not None:
            hits = searcher.similar_image(_image(body.image), body.k, filters=filters, ranking=ranking)
        elif body.id is not None:
            if searcher.reader.find_tweet(body.id) is None:
                raise HTTPException(404, f"{body.index}: no tweet with id {body.id}")
            hits = searcher.similar_to_tweet(body.id, body.k, filters=filters, ranking=ranking)
        else:
            hits = searcher.similar(
                body.text or "",
                body.k,
                filters=filters,
                space=body.space,
                mode=body.mode,
                min_score=body.min_score,
                ranking=ranking,
            )
        found = [
            HitOut(
                rank=h.rank,
                score=round(h.score, 4),
                found_by=dict(h.found_by),
                near_copies=list(h.near_copies),
                factors={k: round(v, 4) for k, v in h.factors.items()},
                **Tweet.of(h.tweet).model_dump(),
            )
            for h in hits
        ]
        searched = "image" if body.image is not None else body.space
        plan = searcher.reader.plan(filters, space=searched).to_json() if body.explain else None
        return SimilarOut(index=index.name, version=searcher.reader.manifest.version, hits=found, explain=plan)

    @v1.post("/predict", response_model=PredictOut)
    def predict(body: PredictIn) -> PredictOut:
        index = index_of(body.index)
        image = _image(body.image) if body.image is not None else None
        found = index.predictor.predict(body.text, body.username, body.company, _naive(body.date), image=image)
        return PredictOut(index=index.name, **found.to_json())

    @v1.post("/generate", response_model=None)
    def generate(body: GenerateIn) -> Any:
        if model is None:
            raise ModelMissing("this server was started without a language model")
        index = index_of(body.index)
        if body.stream:
            model.acquire()  # here, so a full queue is a 503; the stream's worker releases it
            return StreamingResponse(_stream(index, model, body), media_type="text/event-stream")
        with model.turn() as generator:
            return _generate(index, generator, body)

    def profile_of(index: ServedIndex, name: str) -> Profile:
        found = ProfileStore(index.path).find(name)
        if found is None:
            raise HTTPException(404, f"{index.name}: no profile {name!r}")
        return found

    @v1.get("/profiles/{index}", response_model=list[ProfileOut])
    def list_profiles(index: str) -> list[dict]:
        return [p.to_json() for p in ProfileStore(index_of(index).path).all()]

    @v1.get("/profiles/{index}/{name}", response_model=ProfileOut)
    def show_profile(index: str, name: str) -> dict:
        return profile_of(index_of(index), name).to_json()

    @v1.post("/profiles", response_model=ProfileOut)
    def add_profile(body: ProfileIn) -> dict:
        index = index_of(body.index)
        return add_to_profile(index.searcher, ProfileStore(index.path), body.name, body.liked, body.texts).to_json()

    @v1.delete("/profiles/{index}/{name}")
    def delete_profile(index: str, name: str) -> dict[str, str]:
        served_index = index_of(index)
        profile_of(served_index, name)
        ProfileStore(served_index.path).delete(name)
        return {"deleted": name}

    @v1.post("/recommend", response_model=RecommendOut)
    def recommend_for(body: RecommendIn) -> RecommendOut:
        index = index_of(body.index)
        f = body.filters
        filters = Filters(f.username, f.company, _naive(f.since), whole_day(_naive(f.until)), f.min_likes)
        person = profile_of(index, body.name)
        found = recommend(index.searcher, person, body.k, filters=filters, diversity=body.diversity)
        return RecommendOut(index=index.name, profile=person.name, recommendations=[r.to_json() for r in found])

    @v1.post("/audience", response_model=AudienceOut)
    def audience_of(body: AudienceIn) -> AudienceOut:
        index = index_of(body.index)
        if (body.text is None) == (body.id is None):
            raise HTTPException(400, "give one of text or id")
        text = body.text
        if body.id is not None:
            row = index.searcher.reader.find_tweet(body.id)
            if row is None or not row["content"]:
                raise HTTPException(404, f"{body.index}: no tweet with id {body.id} and text")
            text = row["content"]
        fits = audience(index.searcher, ProfileStore(index.path).all(), text or "", body.k)
        return AudienceOut(index=index.name, fits=[f.to_json() for f in fits])

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> dict[str, Any]:
        versions = {name: s.version for name, s in served.items()}
        return {"ready": True, "indexes": versions, "model": getattr(model.generator, "name", None) if model else None}

    app.include_router(v1)
    static = resources.files("retrieval.apps.api") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    return app


def _describe(index: ServedIndex) -> IndexOut:
    reader = index.searcher.reader
    manifest, stats = reader.manifest, reader.stats()
    return IndexOut(
        name=index.name,
        version=manifest.version,
        rows=stats["rows"],
        vectors=stats["vectors"],
        spaces=[space for space in manifest.sets() if reader.has_vectors(space)],
        text_model=manifest.text.embedder.get("name"),
        factory=manifest.text.factory,
        nprobe=manifest.text.nprobe,
        recall_at_10=manifest.text.recall_at_10,
        built_at=manifest.built_at,
        updated_at=manifest.updated_at,
        table=stats,
    )


def _brief_and_config(body: GenerateIn) -> tuple[Any, Any]:
    from retrieval.tasks.generate.rag import Brief, GenerateConfig

    brief = Brief(
        username=body.username,
        company=body.company,
        date=_naive(body.date),
        media=body.media,
        likes=body.likes,
        topic=body.topic,
    )
    config = GenerateConfig(
        exemplars=body.exemplars,
        max_tokens=body.max_tokens,
        min_tokens=body.min_tokens,
        diversity=body.diversity,
        temperature=body.temperature,
        seed=body.seed,
        grammar=body.grammar,
    )
    return brief, config


def _generate(index: ServedIndex, generator: Any, body: GenerateIn, on_token: Any = None) -> dict[str, Any]:
    from retrieval.tasks.generate.rag import generate

    brief, config = _brief_and_config(body)
    found, method = generate(
        index.searcher,
        generator,
        brief,
        config,
        candidates=body.candidates,
        rank=body.rank,
        on_token=on_token,
        original=body.original,
    )
    return {
        "index": index.name,
        "model": getattr(generator, "name", None),
        "ranked_by": method,
        "candidates": [c.to_json() for c in found],
    }


def _stream(index: ServedIndex, model: ModelQueue, body: GenerateIn) -> Iterator[str]:
    """Server-sent events: `token` ({candidate, text}) as the model writes, then `result` (the
    same JSON as without streaming) or `error`. The model is released when the writing ends."""
    events: queue.Queue[tuple[str, Any] | None] = queue.Queue()

    def work() -> None:
        try:
            result = _generate(index, model.generator, body, lambda n, piece: events.put(("token", [n, piece])))
            events.put(("result", result))
        except RetrievalError as e:
            events.put(("error", {"error": str(e)}))
        except Exception:
            log.exception("generation failed")
            events.put(("error", {"error": "internal error"}))
        finally:
            model.release()
            events.put(None)

    GENERATION.submit(work)  # now: it releases the model

    def sent() -> Iterator[str]:
        while (event := events.get()) is not None:
            kind, data = event
            if kind == "token":
                data = {"candidate": data[0], "text": data[1]}
            yield f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"

    return sent()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RetrievalError)
    def library_error(request: Request, e: RetrievalError) -> JSONResponse:
        status = next((code for kind, code in STATUS if isinstance(e, kind)), 400)
        return _error(status, str(e), {"hint": e.hint, "value": e.value} if e.hint else None)

    @app.exception_handler(Busy)
    def busy(request: Request, e: Busy) -> JSONResponse:
        return _error(503, str(e), headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(HTTPException)
    def http_error(request: Request, e: HTTPException) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status_code == 401 else None
        return _error(e.status_code, str(e.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        detail = [_problem(err) for err in e.errors()]
        first = detail[0] if detail else {"field": "", "problem": "invalid"}
        return _error(422, f"{first['field'] or 'body'}: {first['problem']}", detail)

    @app.exception_handler(Exception)
    def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details")


def _problem(err: Mapping[str, Any]) -> dict[str, str]:
    """One validation error as field and problem, with the body's own faults in words: pydantic
    names a body that is not JSON after its character offset ("0: JSON decode error"), and one
    sent without a JSON content type "not a valid dictionary"."""
    field = ".".join(str(p) for p in err["loc"][1:])
    if err["type"] == "json_invalid":
        return {"field": "", "problem": f"not valid JSON ({err.get('ctx', {}).get('error', 'cannot be decoded')})"}
    if not field and err["type"] in ("model_attributes_type", "dict_type"):
        return {"field": "", "problem": "must be a JSON object, sent with Content-Type: application/json"}
    return {"field": field, "problem": err["msg"]}


class BodyLimit:
    """ASGI middleware: a request body over the limit gets 413 before the app sees it, whether it
    declares its length or arrives in chunks (read up to the limit, then replayed to the app)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(int(declared), scope, receive, send)
        messages, received = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                return await self._refuse(received, scope, receive, send)
            if not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed() -> dict:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, size: int, scope: dict, receive: Any, send: Any) -> None:
        limit = f"{self.limit / 2**20:.1f} MiB"
        message = f"request of {size / 2**20:.1f} MiB or more, over the {limit} limit"
        await _error(413, message)(scope, receive, send)
