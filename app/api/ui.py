"""GET /ui: the static page (app/ui/). Scaffold: the page is being built (issue 13)."""

from fastapi import FastAPI


def install_ui(app: FastAPI) -> None:
    """Serve the page at /ui (and link it from /); called by create_app when GPT2_UI is on."""
