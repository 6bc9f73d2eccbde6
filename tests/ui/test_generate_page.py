"""Generate in the browser: the text streams in chunk by chunk, ends, and goes to Score in one click."""

import httpx
from selenium.webdriver.common.by import By

from tests.ui.pages import fill, find, open_page, screenshot, wait

PROMPT = "The meaning of life is"
PARAMS = {"max_tokens": 40, "temperature": 0.5, "top_p": 1.0, "top_k": 0, "seed": 7}

# Records what the page does to the output as it happens: one entry per appended chunk, with the
# length of the text at that moment.
WATCH_OUTPUT = """
window.__chunks = [];
new MutationObserver((records) => {
  for (const record of records) window.__chunks.push({added: record.addedNodes.length,
                                                     length: record.target.textContent.length});
}).observe(document.getElementById("gen-completion"), {childList: true});
"""


def test_generation_streams_into_the_page_then_goes_to_score(page, server, tmp_path):
    expected = httpx.post(f"{server.url}/v1/completions", json={"prompt": PROMPT, **PARAMS}, timeout=60).json()
    assert expected["usage"]["completion_tokens"] >= 20, expected  # enough tokens to see a stream
    open_page(page, server.url)
    fill(page, "#gen-prompt", PROMPT)
    for name, value in PARAMS.items():
        fill(page, f"#gen-{name.replace('_', '-')}", str(value))
    page.execute_script(WATCH_OUTPUT)
    find(page, "#gen-button").click()
    wait(page, lambda d: find(d, "#gen-status").text.startswith("Done"), "the generation never finished")
    # streamed: the text arrived in many separate chunks and grew with each, then the stream ended
    chunks = page.execute_script("return window.__chunks")
    lengths = [c["length"] for c in chunks if c["added"]]  # per observer call: chunks that came together share one
    assert len(lengths) >= 5 and lengths == sorted(lengths), chunks  # at least 5 chunks appended one by one
    assert len(set(lengths)) >= 3, chunks  # and the text seen growing at least 3 times before the end
    text = expected["choices"][0]["text"]
    assert find(page, "#gen-completion").get_attribute("textContent") == text  # seeded: the same tokens
    assert lengths[-1] == len(text)
    assert find(page, "#gen-prompt-echo").text == PROMPT
    assert not find(page, "#gen-stop-button").is_enabled()
    screenshot(page, tmp_path, "generate")

    # one click: the completion is scored given its prompt as context
    find(page, "#send-to-score").click()
    wait(page, lambda d: find(d, "#score-status").text.startswith("Scored"), "Send to Score never scored")
    assert find(page, "#score-text").get_attribute("value") == text
    assert find(page, "#score-context").get_attribute("value") == PROMPT
    scored = httpx.post(f"{server.url}/v1/score", json={"input": text, "context": PROMPT}, timeout=60).json()
    tokens = page.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    assert len(tokens) == len(scored["data"][0]["tokens"]) and scored["data"][0]["num_context_tokens"] > 0
    assert "none" not in [t.get_attribute("data-bucket") for t in tokens]  # with a context, all are scored
    assert page.switch_to.active_element == find(page, "#result-title")
    screenshot(page, tmp_path, "sent-to-score")


def test_stop_ends_a_generation_early(page, server):
    open_page(page, server.url)
    fill(page, "#gen-max-tokens", "500")  # the tiny model holds 512; this takes seconds
    fill(page, "#gen-seed", "")
    find(page, "#gen-button").click()
    wait(page, lambda d: find(d, "#gen-stop-button").is_enabled(), "Stop never became available")
    wait(page, lambda d: d.find_element(By.ID, "gen-completion").get_attribute("textContent"), "no text came")
    find(page, "#gen-stop-button").click()
    wait(page, lambda d: find(d, "#gen-status").text.startswith("Stopped"), "Stop did not stop")
    assert page.switch_to.active_element == find(page, "#gen-button")  # focus is not lost
    assert not find(page, "#gen-error").is_displayed()
