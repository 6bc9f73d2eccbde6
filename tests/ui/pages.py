"""Helpers to drive the page: open it, fill fields, wait for results, take screenshots."""

import base64
import math
from pathlib import Path

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

WAIT_S = 20
BUCKET_EDGES = [("top_10", 10), ("top_100", 100), ("top_1000", 1000), ("rest", math.inf)]


def bucket_of(rank: int | None) -> str:
    """GLTR's bucket of a 1-based rank, as docs/scoring.md defines them; "none" for an unscored token."""
    return "none" if rank is None else next(name for name, high in BUCKET_EDGES if rank <= high)


def wait(driver, condition, message: str, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message)


def find(driver, css: str):
    return driver.find_element(By.CSS_SELECTOR, css)


def open_page(driver, base_url: str, expect_model: bool = True) -> None:
    driver.get(f"{base_url}/ui/")
    if expect_model:
        wait(driver, lambda d: find(d, "#model-info").text.startswith("Model "), "the model info never showed")


def fill(driver, css: str, text: str) -> None:
    """Set a field's value (send_keys is slow for long texts and would trigger Ctrl+Enter handling)."""
    driver.execute_script("arguments[0].value = arguments[1]", find(driver, css), text)


def visible_text(driver, css: str) -> str:
    element = find(driver, css)
    return element.text if element.is_displayed() else ""


def score_in_page(driver, text: str) -> None:
    """Type the text, press Score, and wait until the page shows the result (or an error)."""
    fill(driver, "#score-text", text)
    driver.execute_script("document.getElementById('score-result').hidden = true")
    find(driver, "#score-button").click()
    wait(driver, lambda d: find(d, "#score-result").is_displayed() or find(d, "#score-error").is_displayed(),
         "scoring never finished")


def screenshot(driver, directory: Path, name: str) -> Path:
    """Save a PNG of the whole page, beyond the viewport too (Chrome DevTools' Page.captureScreenshot).
    The pointer is parked on the title first: the capture re-lays the page out, and a pointer left over
    a token would show that token's details instead of the focused one's."""
    ActionChains(driver).move_to_element(find(driver, "h1")).perform()
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path = directory / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
