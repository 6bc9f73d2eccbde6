"""GET /ui: the static page in app/ui/ (HTML, CSS, plain JS modules; nothing is built or downloaded).

The page is public: it holds no data and no secret, and a browser cannot send a Bearer header when
it navigates. Everything it shows comes from the API, whose routes keep checking GPT2_API_KEYS; the
page asks for the key when the API answers 401 (see docs/ui.md). None of these routes is in the
OpenAPI schema: they are not part of the API.
"""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

# The browser enforces what the page promises: it talks to this service only ('self'), runs no
# inline script, and cannot be framed by another site.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): a new release's page is seen at once
}


class PageFiles(StaticFiles):
    """StaticFiles (index.html at /ui/, ETags, 404s) with the security headers on every answer."""

    async def get_response(self, path: str, scope: Scope):
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_ui(app: FastAPI) -> None:
    """Serve the page at /ui (and link it from /); called by create_app when GPT2_UI is on."""

    # Relative redirects: the page also works behind a proxy that mounts the service under a prefix.
    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("ui/", status_code=307)

    @app.get("/ui", include_in_schema=False)
    async def ui() -> RedirectResponse:
        return RedirectResponse("ui/", status_code=307)

    app.mount("/ui", PageFiles(directory=UI_DIR, html=True), name="ui")
