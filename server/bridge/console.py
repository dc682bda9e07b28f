"""The web console: a static single-page app (plain HTML, CSS and ES modules
in server/bridge/static/, no build step, nothing fetched from the internet)
that uses only the bridge's public REST, server-sent events and WebSocket API.

`/` serves the page; its scripts and styles are under `/console/`. Every one
of its files (the page under either name, `/` or `/console/index.html`)
answers with a Content-Security-Policy that allows only this origin and no
framing, so a console that tried to load anything from elsewhere would be
stopped by the browser, and no other site can frame it."""

import os
from pathlib import Path

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"
# The kinds of the console's files, said here rather than guessed from the
# machine's MIME table: under nosniff a browser runs a module only when it
# comes as JavaScript.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

CSP = "; ".join(
    [
        "default-src 'self'",
        "connect-src 'self'",  # fetch, EventSource and the WebSocket, same origin only
        "img-src 'self' blob: data:",  # thumbnails of picked images and camera frames
        "media-src 'self' blob: mediastream:",  # the camera preview
        "style-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'none'",
    ]
)

HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
}


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type=MEDIA_TYPES[".html"], headers=HEADERS)


class ConsoleFiles(StaticFiles):
    """The console's files, each of its kind (MEDIA_TYPES), revalidated on each
    load (they are small, and a node upgrade must not leave an old script
    beside a new page)."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        media_type = MEDIA_TYPES.get(Path(full_path).suffix)
        response = FileResponse(full_path, status_code=status_code, stat_result=stat_result, media_type=media_type)
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response


routes = [
    Route("/", index, methods=["GET"]),
    Mount("/console", app=ConsoleFiles(directory=STATIC), name="console"),
]
