"""How the page is served (no browser needed): at /ui/, linked from /, with its security headers,
kept out of the API's OpenAPI schema, public even with API keys, and gone with GPT2_UI=false."""

import re

from fastapi.testclient import TestClient

from app.api.ui import UI_DIR
from app.config import Settings
from app.main import create_app


def client(**settings) -> TestClient:
    # no `with`: the lifespan (the model) is not needed to serve static files
    return TestClient(create_app(Settings(load_format="dummy", **settings)), follow_redirects=False)


def test_the_page_is_served_at_ui_and_linked_from_the_root():
    http = client()
    for path in ("/", "/ui"):
        response = http.get(path)
        assert response.status_code == 307 and response.headers["location"] == "ui/"
    page = http.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>gpt2-serve</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "connect-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    script = http.get("/ui/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["x-content-type-options"] == "nosniff"
    missing = http.get("/ui/no-such-file.js")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    # a traversal, percent-encoded so that the client sends it as is (it would normalise "/ui/../")
    # and the server decodes it to /ui/../config.py; an in-directory path written the same way is
    # served, which shows the path reached the server undecoded by the client
    escape = http.get("/ui/%2e%2e/config.py")
    assert escape.status_code == 404 and escape.json()["error"]["type"] == "not_found_error"
    assert http.get("/ui/%2e%2e/%2e%2e/app/config.py").status_code == 404
    assert http.get("/ui/%2e%2e/ui/main.js").status_code == 200


def test_every_file_the_page_loads_is_in_app_ui_and_nothing_comes_from_elsewhere():
    files = {path.name for path in UI_DIR.iterdir()}
    html = (UI_DIR / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="([^"#:]+)"', html)) - {"../docs"}
    for script in UI_DIR.glob("*.js"):
        referenced |= {name.removeprefix("./") for name in re.findall(r'from "([^"]+)"', script.read_text())}
    assert referenced and referenced <= files, referenced - files
    everything = "".join(path.read_text() for path in UI_DIR.iterdir())
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", everything)  # no CDN, no other host
    assert "innerHTML" not in everything  # text from the API is never parsed as HTML


def test_the_page_is_public_but_the_api_behind_it_needs_the_key():
    http = client(api_keys=["k1"])
    assert http.get("/ui/").status_code == 200
    assert http.get("/v1/models").status_code == 401


def test_the_page_stays_out_of_the_openapi_schema():
    paths = create_app(Settings(load_format="dummy")).openapi()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/ui")]


def test_gpt2_ui_false_turns_the_page_off():
    http = client(ui=False)
    for path in ("/", "/ui", "/ui/", "/ui/main.js"):
        assert http.get(path).status_code == 404, path

