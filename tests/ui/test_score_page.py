"""Score in the browser: every token coloured by the bucket /v1/score reports, details on focus,
statistics, the rank histogram, and the judge's verdict when there is one."""

import math

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.ui.pages import bucket_of, find, open_page, score_in_page, screenshot, wait

# prose, a newline, and an emoji that GPT-2 splits into byte tokens ("bytes:\xNN")
TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen.\n"
        "Winston Smith slipped quickly through the glass doors of Victory Mansions \u2615.")
HISTOGRAM_EDGES = [1, 2, 3, 6, 11, 21, 51, 101, 201, 501, 1001, 2001, 5001, 10001, math.inf]


def api_score(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/score", json={"top_logprobs": 5, "detect": True, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def histogram_counts(ranks: list[int | None]) -> list[int]:
    counts = [0] * (len(HISTOGRAM_EDGES) - 1)
    for rank in filter(None, ranks):
        counts[next(i for i in range(len(counts)) if HISTOGRAM_EDGES[i] <= rank < HISTOGRAM_EDGES[i + 1])] += 1
    return counts


@pytest.fixture
def scored(page, server, tmp_path):
    """The page after scoring TEXT, and /v1/score's own answer for the same request."""
    open_page(page, server.url)
    score_in_page(page, TEXT)
    assert find(page, "#score-result").is_displayed(), find(page, "#score-error").text
    return page, api_score(server, input=TEXT)["data"][0]


def test_every_token_is_coloured_with_the_bucket_that_v1_score_reports(scored, server, tmp_path):
    page, expected = scored
    spans = page.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    assert len(spans) == len(expected["tokens"]) == expected["num_tokens"] + 1  # the first token is not scored
    assert any(token.startswith("bytes:") for token in expected["tokens"])  # the emoji's bytes are tokens too
    buckets = [span.get_attribute("data-bucket") for span in spans]
    assert buckets == [bucket_of(rank) for rank in expected["ranks"]]
    # the page's bucket shares are /v1/score's GLTR fractions
    scored_tokens = sum(b != "none" for b in buckets)
    for name, fraction in expected["detection"]["gltr"].items():
        assert buckets.count(name) / scored_tokens == pytest.approx(fraction, abs=1e-9), name
        assert f": {buckets.count(name)} (" in find(page, f'#legend [data-bucket="{name}"]').text
    # the text shown is the text sent (an arrow marks a newline; byte tokens are decoded back to the emoji)
    assert page.find_element(By.ID, "tokens").text.replace("\u21b5", "") == TEXT
    # statistics and histogram
    stats = find(page, "#score-stats").text
    assert f"{expected['perplexity']:.2f}" in stats and f"{expected['detection']['fast_detect_gpt']:.2f}" in stats
    bins = page.find_elements(By.CSS_SELECTOR, "#rank-histogram g.bin")
    assert [int(b.get_attribute("data-count")) for b in bins] == histogram_counts(expected["ranks"])
    assert "ranked tokens" in find(page, "#histogram-summary").text
    # no judge loaded: said so quietly, in the server's words
    detector = api_score(server, input=TEXT)["detector"]
    assert detector["loaded"] is False
    assert find(page, '#verdict-body [data-judge="absent"]').text.startswith(detector["message"])
    assert not find(page, "#dummy-banner").is_displayed()
    assert "tiny-gpt2" in find(page, "#model-info").text
    screenshot(page, tmp_path, "score")


def test_focusing_a_token_shows_its_probability_rank_entropy_and_alternatives(scored, tmp_path):
    page, expected = scored
    spans = page.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    spans[0].click()
    assert "Not scored" in find(page, "#token-details").text
    spans[0].send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)  # roving focus: the arrows move along the text
    assert page.switch_to.active_element == spans[2]
    details = find(page, "#token-details").text
    rank, logprob, entropy = expected["ranks"][2], expected["token_logprobs"][2], expected["entropies"][2]
    assert f"Token 3 of {len(spans)}" in details
    assert f"{rank:,}" in details and f"{logprob:.3f}" in details and f"{entropy:.2f} nats" in details
    assert f"{100 * math.exp(logprob):.1f} %" in details or math.exp(logprob) < 0.001
    alternatives = page.find_elements(By.CSS_SELECTOR, "#token-details tbody tr")
    assert len(alternatives) == len(expected["top_logprobs"][2]) == 5
    page.switch_to.active_element.send_keys(Keys.END)
    assert page.switch_to.active_element == spans[-1]
    assert f"Token {len(spans)} of {len(spans)}" in find(page, "#token-details").text
    screenshot(page, tmp_path, "token-details")


def test_the_bucket_edges_are_gltrs(page, server):
    open_page(page, server.url)
    ranks = [1, 10, 11, 100, 101, 1000, 1001, 50000]
    buckets = page.execute_async_script("""const [ranks, done] = arguments;
        import("./buckets.js").then((m) => done(ranks.map((r) => m.bucketOf(r).id)));""", ranks)
    assert buckets == ["top_10", "top_10", "top_100", "top_100", "top_1000", "top_1000", "rest", "rest"]
    assert buckets == [bucket_of(rank) for rank in ranks]


def test_a_loaded_judge_shows_the_servers_verdict_probability_and_features(page, judged_server, tmp_path):
    open_page(page, judged_server.url)
    score_in_page(page, TEXT)
    answer = api_score(judged_server, input=TEXT)
    judge = answer["data"][0]["detection"]["judge"]
    assert answer["detector"] == {"loaded": True, "name": "ui-judge", "threshold": 0.5}
    verdict = find(page, "#verdict-body")
    label = "Likely machine-written" if judge["verdict"] == "machine" else "Likely human-written"
    assert find(page, f'#verdict-body [data-judge="{judge["verdict"]}"]').text == label
    assert f"{judge['machine_probability'] * 100:.1f} %" in verdict.text
    assert "threshold 0.5" in verdict.text and "ui-judge" in verdict.text
    assert float(find(page, "#judge-meter").get_attribute("value")) == pytest.approx(judge["machine_probability"])
    rows = [row.text.split()[0] for row in page.find_elements(By.CSS_SELECTOR, "#judge-features tbody tr")]
    assert rows == [feature["name"] for feature in judge["top_features"]]
    screenshot(page, tmp_path, "verdict")


# The other states of the verdict, from the real answer with its judge part replaced in the page.
REPLACE_JUDGE = """
const [detector, judge] = arguments;
window.fetch = ((inner) => async (url, init) => {
  const response = await inner(url, init);
  if (!String(url).endsWith("/v1/score") || !response.ok) return response;
  const body = await response.json();
  body.detector = detector;
  for (const result of body.data) result.detection.judge = judge;
  return new Response(JSON.stringify(body), {status: 200, headers: {"Content-Type": "application/json"}});
})(window.fetch);
"""


def test_the_verdicts_other_states(page, server):
    open_page(page, server.url)
    judge = {"machine_probability": 0.12, "verdict": "human", "threshold": 0.5,
             "top_features": [{"name": "mean_log_rank", "value": 1.2, "contribution": -2.3}]}
    page.execute_script(REPLACE_JUDGE, {"loaded": True, "name": "j", "threshold": 0.5}, judge)
    score_in_page(page, TEXT)
    verdict = find(page, "#verdict-body")
    assert find(page, '#verdict-body [data-judge="human"]').text == "Likely human-written"
    assert "12.0 %" in verdict.text
    assert [r.text for r in page.find_elements(By.CSS_SELECTOR, "#judge-features tbody tr")] == \
        ["mean_log_rank 1.200 \u22122.30"]
    # a judge that is configured but failed to load (its message shown)
    page.execute_script(REPLACE_JUDGE, {"loaded": False, "message": "the judge in /models/judge could not be read"},
                        None)
    score_in_page(page, TEXT)
    assert find(page, '#verdict-body [data-judge="absent"]').text.startswith("the judge in /models/judge could not")


def test_a_long_text_from_a_file_is_scored_with_the_sliding_window(page, server, tmp_path):
    text = " ".join(["The cat sat on the mat."] * 80)  # ~560 tokens: beyond the tiny model's 512
    path = tmp_path / "long.txt"
    path.write_text(text)
    open_page(page, server.url)
    find(page, "#score-file").send_keys(str(path))
    wait(page, lambda d: find(d, "#score-text").get_attribute("value") == text, "the file was not loaded")
    find(page, "#score-sliding").click()
    score_in_page(page, text)
    expected = api_score(server, input=text, window="sliding")["data"][0]
    assert expected["num_windows"] > 1
    assert len(page.find_elements(By.CSS_SELECTOR, "#tokens .tok")) == len(expected["tokens"])
    assert f"sliding windows\n{expected['num_windows']}" in find(page, "#score-stats").text
