"""Fixtures for the page at /ui: live servers on 127.0.0.1 and a headless Chromium driven by Selenium.

Chromium and chromedriver are Debian's (scripts/install-tools.sh installs them). Without them the
browser tests skip, except under CI=true where they fail. Selenium Manager never runs: the driver's
path is given and SE_AVOID_STATS=true. Every test using `page` also checks, from Chrome's performance
log, that the page requested nothing from any host but the service, and that no script failed.
"""

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.detect.features import FEATURE_NAMES
from app.detect.judge import Judge, ModelIdentity
from tests.integration.conftest import start_server

MODEL = "tiny-gpt2"
API_KEY = "ui-test-key"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000"]


def _require(name: str, *candidates: str) -> str:
    found = next((path for path in (*candidates, shutil.which(name)) if path and Path(path).is_file()), None)
    if found:
        return found
    message = f"{name} is not installed (scripts/install-tools.sh installs Debian's chromium and chromium-driver)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def server(tiny_model_dir):
    """The service with the tiny model and no API keys."""
    live = start_server(model=tiny_model_dir, served_model_name=MODEL)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def judged_server(server, tiny_model_dir, tmp_path_factory):
    """The service with a judge (GPT2_DETECTOR) for the tiny model. Its weights are set by hand:
    the page must show whatever the server answers; tests/detect covers training a good one."""
    card = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]
    identity = ModelIdentity(MODEL, tiny_model_dir, card["num_parameters"], card["load_format"])
    coef = [0.5 if name == "mean_log_rank" else 0.1 if name == "fast_detect_gpt" else 0.0 for name in FEATURE_NAMES]
    judge = Judge("ui-judge", identity, list(FEATURE_NAMES), [0.0] * len(coef), [1.0] * len(coef), coef,
                  intercept=-4.0, calibration=(1.0, 0.0), threshold=0.5)
    directory = tmp_path_factory.mktemp("judge")
    judge.save(directory)
    live = start_server(model=tiny_model_dir, served_model_name=MODEL, detector=str(directory))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir):
    """The service with API keys and random (dummy) weights: the page must ask for the key and warn."""
    live = start_server(model=tiny_model_dir, served_model_name=MODEL, api_keys=[API_KEY], load_format="dummy")
    yield live
    live.stop()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """One headless Chromium for the whole session (a fresh profile); each test gets it through `page`."""
    chromedriver = _require("chromedriver", "/usr/bin/chromedriver")
    chromium = _require("chromium", "/usr/bin/chromium")
    os.environ["SE_AVOID_STATS"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def requested_urls(driver) -> list[str]:
    """The URLs the browser sent requests for since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def foreign_urls(urls: list[str], allowed_origins: set[str]) -> list[str]:
    return [url for url in urls if urlsplit(url).scheme not in ("data", "about", "blob")
            and f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" not in allowed_origins]


def console_errors(driver) -> list[str]:
    """Script errors and Content-Security-Policy violations (a request the CSP blocked is never sent,
    so it shows here, not in the performance log). An API error (400, 401) is logged as a failed
    resource: that is expected, not a page bug."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]]


@pytest.fixture
def page(browser, server, request):
    """The browser, checked after the test: it requested nothing from any host but the services
    under test, and its console shows no script error or CSP violation."""
    browser.set_window_size(1280, 1000)
    browser.get("about:blank")
    requested_urls(browser)  # drop what earlier tests left
    console_errors(browser)
    yield browser
    allowed = {server.url}
    for other in request.fixturenames:  # the other services under test: keyed_server, judged_server, ...
        if other.endswith("_server"):
            allowed.add(request.getfixturevalue(other).url)
    urls = requested_urls(browser)
    assert urls and not foreign_urls(urls, allowed), f"requests to other hosts: {foreign_urls(urls, allowed)}"
    errors = console_errors(browser)
    assert not errors, errors
