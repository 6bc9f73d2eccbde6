"""The checks every page test ends with can fail: a request to another host is seen in Chrome's
performance log when it is sent, and in the console when the page's CSP blocks it."""

from selenium.webdriver.support.ui import WebDriverWait

from tests.ui.conftest import console_errors, foreign_urls, requested_urls
from tests.ui.pages import open_page

ELSEWHERE = "http://198.51.100.7"  # TEST-NET-2: never routed, so nothing leaves the machine


def test_a_request_to_another_host_is_caught_with_or_without_the_csp(browser, server):
    open_page(browser, server.url)
    requested_urls(browser), console_errors(browser)
    browser.execute_script(f"fetch('{ELSEWHERE}/blocked').catch(() => {{}})")
    errors = WebDriverWait(browser, 10).until(lambda d: console_errors(d), "the CSP violation was not logged")
    assert any("Content Security Policy" in error and ELSEWHERE in error for error in errors)

    browser.execute_cdp_cmd("Page.setBypassCSP", {"enabled": True})  # as if the page had no CSP
    try:
        open_page(browser, server.url)
        requested_urls(browser)
        browser.execute_script(f"fetch('{ELSEWHERE}/sent', {{signal: AbortSignal.timeout(500)}}).catch(() => {{}})")
        seen = []
        foreign = WebDriverWait(browser, 10).until(
            lambda d: seen.extend(requested_urls(d)) or foreign_urls(seen, {server.url}), "the request was not seen")
        assert foreign == [f"{ELSEWHERE}/sent"]
    finally:
        browser.execute_cdp_cmd("Page.setBypassCSP", {"enabled": False})
        console_errors(browser)
