"""Errors in the browser: the API's own message, shown where the user acted; a 401 asks for the key."""

import httpx
from selenium.webdriver.common.by import By

from tests.ui.conftest import API_KEY
from tests.ui.pages import fill, find, open_page, score_in_page, screenshot, wait


def api_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_an_over_long_text_and_a_bad_parameter_show_the_apis_message(page, server, tmp_path):
    text = "word " * 700  # beyond the tiny model's 512 tokens, without the sliding window
    error = api_error(httpx.post(f"{server.url}/v1/score", json={"input": text, "top_logprobs": 5}), 400)
    open_page(page, server.url)
    score_in_page(page, text)
    shown = find(page, "#score-error").text
    assert shown == f"400 invalid_request_error: {error['message']}"
    assert "512" in shown and not find(page, "#score-result").is_displayed()
    screenshot(page, tmp_path, "error-too-long")

    error = api_error(httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "temperature": 5}), 400)
    fill(page, "#gen-temperature", "5")
    find(page, "#gen-button").click()
    wait(page, lambda d: find(d, "#gen-error").is_displayed(), "no generation error shown")
    assert find(page, "#gen-error").text == f"400 invalid_request_error: {error['message']}"
    assert "temperature" in error["message"]

    # a full queue: the page says when to retry (Retry-After), faked since a real 429 needs a full engine
    page.execute_script("""window.fetch = async () => new Response(JSON.stringify({error: {
        message: "the queue is full (64 waiting); retry later", type: "rate_limit_error", param: null,
        code: "queue_full"}}), {status: 429, headers: {"Retry-After": "3", "Content-Type": "application/json"}});""")
    score_in_page(page, "Some text.")
    assert find(page, "#score-error").text == ("429 rate_limit_error: the queue is full (64 waiting); retry later "
                                               "(retry after 3 s)")
    assert not find(page, "#key-panel").is_displayed()


def test_with_api_keys_the_page_asks_for_one_and_keeps_it_in_the_session(page, keyed_server, tmp_path):
    error = api_error(httpx.get(f"{keyed_server.url}/v1/models"), 401)
    page.get(f"{keyed_server.url}/ui/")  # the page itself is public: it holds no data
    wait(page, lambda d: find(d, "#page-error").is_displayed(), "the 401 was not shown")
    assert find(page, "#page-error").text == f"401 authentication_error: {error['message']}"
    assert find(page, "#key-panel").is_displayed()
    assert page.switch_to.active_element == find(page, "#api-key")
    assert not find(page, "#dummy-banner").is_displayed()  # unknown until the models can be read
    score_in_page(page, "Hello there.")
    assert find(page, "#score-error").text.startswith("401 authentication_error")
    screenshot(page, tmp_path, "key-needed")

    find(page, "#api-key").send_keys("wrong-key\n")
    wait(page, lambda d: "refused" in find(d, "#key-note").text, "a wrong key was not refused")

    find(page, "#api-key").send_keys(API_KEY + "\n")
    wait(page, lambda d: find(d, "#model-info").text.startswith("Model "), "the key did not unlock the API")
    assert not find(page, "#page-error").is_displayed()
    assert find(page, "#dummy-banner").is_displayed()  # this server has random weights: said loudly
    assert "meaningless" in find(page, "#dummy-banner").text
    score_in_page(page, "Hello there.")
    assert find(page, "#score-result").is_displayed() and not find(page, "#score-error").is_displayed()
    assert page.execute_script("return [sessionStorage.length, localStorage.length, document.cookie]") == [1, 0, ""]
    assert API_KEY in page.execute_script("return Object.values(sessionStorage)")
    assert find(page, "#api-key").get_attribute("value") == ""  # not left in the field
    screenshot(page, tmp_path, "key-accepted-dummy")

    find(page, "#forget-key").click()
    assert page.execute_script("return sessionStorage.length") == 0
    page.refresh()
    wait(page, lambda d: find(d, "#page-error").is_displayed(), "without the key the page still got in")
    assert len(page.find_elements(By.CSS_SELECTOR, "#tokens .tok")) == 0
