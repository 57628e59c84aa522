"""The HTTP service of a gallery index (FastAPI): ``GET /health``, ``POST /search``,
``GET /images/{id}`` (indexed images only) and ``GET /``, a web page that needs no network.

Every error is JSON ``{"error": "..."}`` with a 4xx status: 400 for a body that is not JSON,
413 above :data:`MAX_BODY_BYTES`, 422 for a missing, empty or mistyped field or a ``k``
outside 1..``max_k``, 404 for anything that is not an indexed image.
"""

import json
import logging
import mimetypes
import time
from importlib import resources
from typing import Any

from tbps.inference.retriever import Hit, Retriever

log = logging.getLogger(__name__)

MAX_K = 100
MAX_BODY_BYTES = 16 * 1024
MAX_QUERY_CHARS = 1000
SEARCH_FIELDS = ("query", "image_id", "k")


class RequestError(Exception):
    """A bad request: the status and the message the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_search(body: bytes, max_k: int, images: int) -> tuple[str | None, int | None, int]:
    """``(query, image_id, k)`` of a ``POST /search`` body, or RequestError."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(
            400, f'the body must be JSON, e.g. {{"query": "a man in a red jacket", "k": 10}} ({e})'
        ) from e
    if not isinstance(data, dict):
        raise RequestError(
            422, 'the body must be a JSON object with "query" (or "image_id") and "k"'
        )
    unknown = sorted(set(data) - set(SEARCH_FIELDS))
    if unknown:
        raise RequestError(
            422, f"unknown field(s) {', '.join(unknown)}; valid: {', '.join(SEARCH_FIELDS)}"
        )
    query, image_id, k = data.get("query"), data.get("image_id"), data.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int):
        raise RequestError(422, f'"k" must be an integer in 1..{max_k}, got {json.dumps(k)}')
    if not 1 <= k <= max_k:
        raise RequestError(422, f'"k" must be in 1..{max_k} (the service\'s max_k), got {k}')
    if (query is None) == (image_id is None):
        raise RequestError(422, 'give exactly one of "query" (a description) and "image_id"')
    if query is not None:
        if not isinstance(query, str) or not query.strip():
            raise RequestError(422, '"query" must be a non-empty string')
        if len(query) > MAX_QUERY_CHARS:
            raise RequestError(
                422, f'"query" is {len(query)} characters; at most {MAX_QUERY_CHARS}'
            )
        return query, None, k
    if isinstance(image_id, bool) or not isinstance(image_id, int) or not 0 <= image_id < images:
        raise RequestError(
            422, f'"image_id" must be an image id in 0..{images - 1}, got {json.dumps(image_id)}'
        )
    return None, image_id, k


def page_html() -> str:
    """The web page (one file: HTML, CSS and JavaScript inline, nothing fetched elsewhere)."""
    return resources.files("tbps.inference").joinpath("page/index.html").read_text(encoding="utf-8")


def create_app(retriever: Retriever, max_k: int = MAX_K, max_body_bytes: int = MAX_BODY_BYTES):
    """The FastAPI application serving ``retriever``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    index = retriever.index
    root = index.root.resolve()
    app = FastAPI(title="tbps search", docs_url=None, redoc_url=None, openapi_url=None)
    page = page_html()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {
            404: f"not found: {request.url.path}",
            405: f"method {request.method} not allowed on {request.url.path}",
        }
        return error(exc.status_code, message.get(exc.status_code, str(exc.detail)))

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "images": len(index)}

    @app.get("/", response_class=HTMLResponse)
    def home() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/config")
    def config() -> dict[str, Any]:
        return {"images": len(index), "max_k": max_k, "backend": index.backend}

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise RequestError(413, f"the body is {declared} bytes; at most {max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise RequestError(413, f"the body is over {max_body_bytes} bytes")
        return bytes(body)

    def run_search(query: str | None, image_id: int | None, k: int) -> list[Hit]:
        if query is not None:
            return retriever.search(query, k)
        assert image_id is not None
        return retriever.search_similar(image_id, k)

    @app.post("/search")
    async def search(request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        try:
            query, image_id, k = parse_search(await read_body(request), max_k, len(index))
        except RequestError as e:
            return error(e.status, e.message)
        start = time.perf_counter()
        hits = await run_in_threadpool(run_search, query, image_id, k)
        results = [
            {
                "rank": h.rank,
                "id": h.id,
                "path": h.path,
                "score": round(h.score, 6),
                "url": f"/images/{h.id}",
            }
            for h in hits
        ]
        return JSONResponse(
            {"results": results, "ms": round(1000 * (time.perf_counter() - start), 2)}
        )

    @app.get("/images/{image_id}")
    def image(image_id: str):
        # only decimal ids of indexed images: "..", "%2e%2e", paths and negatives all end here
        if not image_id.isdigit() or not image_id.isascii() or int(image_id) >= len(index):
            return error(404, f"no indexed image with id {image_id!r}")
        path = index.image_file(int(image_id))
        if not path.resolve().is_relative_to(root):  # replaced by a link out of the folder
            return error(404, f"image {image_id} is outside the indexed folder")
        if not path.is_file():
            return error(
                404, f"image {image_id} ({index.paths[int(image_id)]}) is no longer on disk"
            )
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    return app


def serve(
    retriever: Retriever, host: str = "127.0.0.1", port: int = 8000, max_k: int = MAX_K
) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    log.info("serving %d images on http://%s:%d (Ctrl+C to stop)", len(retriever), host, port)
    uvicorn.run(create_app(retriever, max_k=max_k), host=host, port=port, log_level="warning")
