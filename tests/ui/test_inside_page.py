"""Inside the model, in the browser: focusing a scored token shades the text by the attention of the
position that predicted it (a layer and head picker, the heads' average by default) and shows its
logit-lens trajectory, exactly as /v1/score's explanation says; keyboard reachable."""

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.conftest import TINY
from tests.integration.conftest import start_server
from tests.ui.pages import find, open_page, score_in_page, screenshot, wait
from tests.ui.test_score_page import TEXT

L, H = TINY["n_layer"], TINY["n_head"]
EXPLAIN = {"attention_top_k": 16, "lens_top_k": 3}  # what the page asks for (app/ui/score.js)


def explained(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/score", json={"top_logprobs": 5, "detect": True, "explain": EXPLAIN,
                                                          **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["data"][0]


def shading(page) -> dict[int, float]:
    """Token index -> its shade (weight / the largest weight) as the page shows it: the --attn of each
    shaded token, whose computed background is then that much of the shading colour."""
    shades = page.execute_script("""return [...document.querySelectorAll('#tokens .tok.attended')].map((span) =>
        [Number(span.dataset.index), getComputedStyle(span).getPropertyValue('--attn'),
         getComputedStyle(span).backgroundColor]);""")
    for _, shade, background in shades:  # rgba(0, 60, 130, 0.9 x shade)
        assert background.startswith("rgba(0, 60, 130, ") and float(background.split(",")[-1][:-1]) == pytest.approx(
            0.9 * float(shade), abs=0.005)  # 8 bits of alpha
    return {index: float(shade) for index, shade, _ in shades}


def expected_shading(pairs: list[list], num_context: int) -> dict[int, float]:
    largest = max(w for _, w in pairs)
    return {position - num_context: round(w / largest, 3) for position, w in pairs if position >= num_context}


@pytest.fixture
def inside(page, server):
    open_page(page, server.url)
    score_in_page(page, TEXT)
    assert find(page, "#score-result").is_displayed(), find(page, "#score-error").text
    return page, explained(server, input=TEXT)


def test_focusing_a_token_shades_what_its_prediction_attended_to_and_shows_the_lens(inside, tmp_path):
    page, result = inside
    spans = page.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    by_position = {e["position"]: e for e in result["explanation"]["positions"]}
    spans[0].click()
    assert "predicted nothing" in find(page, "#inside-body").text and not shading(page)
    spans[0].send_keys(Keys.ARROW_RIGHT * 5)  # token 6, predicted at position 4
    assert page.switch_to.active_element == spans[5]
    entry = by_position[4]
    assert "attending" in find(page, "#tokens").get_attribute("class")
    # default: the last layer, the heads' average
    assert Select(find(page, "#inside-layer")).first_selected_option.text == str(L)
    assert Select(find(page, "#inside-head")).first_selected_option.text == "average of heads"
    assert shading(page) == pytest.approx(expected_shading(entry["attention"][L - 1]["mean"], 0), abs=1e-3)
    assert all(i <= 4 for i in shading(page))  # only earlier tokens (and the predicting one)
    items = page.find_elements(By.CSS_SELECTOR, "#attention-list li")
    listed = [int(li.get_attribute("data-position")) for li in items]
    assert listed == [p for p, _ in entry["attention"][L - 1]["mean"][:5]]
    # the logit lens: one row per layer, the API's top token and probabilities, the settled layer marked
    rows = page.find_elements(By.CSS_SELECTOR, "#lens-table tbody tr")
    assert len(rows) == L + 1
    for row, layer in zip(rows, entry["lens"], strict=True):
        cells = row.find_elements(By.CSS_SELECTOR, "td")
        top = layer["top"][0]
        assert cells[0].text == top["token"].replace(" ", "\u2423") or top["token"].startswith("bytes:")
        assert cells[1].text == f"{100 * top['prob']:.1f} %" or top["prob"] < 0.001
        assert cells[2].text == f"{100 * layer['next_token_prob']:.1f} %" or layer["next_token_prob"] < 0.001
    settled = page.find_elements(By.CSS_SELECTOR, "#lens-table tr.settled")
    assert len(settled) == 1 and rows.index(settled[0]) == entry["settled_layer"]
    assert f"settles at layer {entry['settled_layer']}" in find(page, "#lens-summary").text
    screenshot(page, tmp_path, "inside")


def test_the_layer_and_head_pickers_are_keyboard_reachable_and_reshade(inside):
    page, result = inside
    spans = page.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    spans[0].click()
    spans[0].send_keys(Keys.END)  # the last token, predicted at the position before it
    last = len(spans) - 1
    entry = next(e for e in result["explanation"]["positions"] if e["position"] == last - 1)
    layer_picker, head_picker = find(page, "#inside-layer"), find(page, "#inside-head")
    layer_picker.send_keys(Keys.ARROW_UP)  # keyboard: from layer L to layer L - 1
    assert Select(layer_picker).first_selected_option.text == str(L - 1)
    assert shading(page) == pytest.approx(expected_shading(entry["attention"][L - 2]["mean"], 0), abs=1e-3)
    head_picker.send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN)  # average -> head 1 -> head 2
    assert Select(head_picker).first_selected_option.text == "head 2"
    assert shading(page) == pytest.approx(expected_shading(entry["attention"][L - 2]["heads"][1], 0), abs=1e-3)
    # Tab reaches the pickers from the text: the text is one stop, then the side panel's controls
    spans[last].click()
    reached = []
    for _ in range(8):
        page.switch_to.active_element.send_keys(Keys.TAB)
        reached.append(page.switch_to.active_element.get_attribute("id"))
        if reached[-1] == "inside-head":
            break
    assert "inside-layer" in reached and reached[-1] == "inside-head"
    # turning the shading off restores the rank colours
    find(page, "#inside-shade").click()
    assert "attending" not in find(page, "#tokens").get_attribute("class")


def test_without_explain_the_page_says_so(page, server):
    open_page(page, server.url)
    find(page, "#score-explain").click()  # untick it
    score_in_page(page, TEXT)
    assert find(page, '#inside-body [data-inside="absent"]').text.startswith("Not explained")
    assert not find(page, "#inside-controls").is_displayed()


@pytest.fixture(scope="module")
def capped_server(tiny_model_dir):
    live = start_server(model=tiny_model_dir, served_model_name="tiny-gpt2", max_explain_positions=8)
    yield live
    live.stop()


def test_a_text_over_the_explain_cap_is_scored_and_the_page_gives_the_reason(page, capped_server):
    open_page(page, capped_server.url)
    score_in_page(page, TEXT)
    assert find(page, "#score-result").is_displayed(), find(page, "#score-error").text
    note = find(page, '#inside-body [data-inside="absent"]').text
    assert note.startswith("Not explained:") and "GPT2_MAX_EXPLAIN_POSITIONS" in note
    wait(page, lambda d: "Scored" in find(d, "#score-status").text, "no status line")


def test_with_a_context_the_first_token_is_explained_from_the_contexts_last_position(page, server):
    open_page(page, server.url)
    context, text = "The cat sat on the", " mat and looked at the door."
    page.execute_script("document.getElementById('context-box').open = true")
    find(page, "#score-context").send_keys(context)
    score_in_page(page, text)
    result = explained(server, input=text, context=context)
    entry = next(e for e in result["explanation"]["positions"] if e["position"] == result["num_context_tokens"] - 1)
    spans = page.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    spans[0].click()  # " mat", predicted at the context's last position: it sees only the context
    body = find(page, "#inside-body").text
    assert f"from the position of {entry['token'].replace(' ', chr(0x2423))}" in body
    on_context = sum(w for _, w in entry["attention"][L - 1]["mean"])  # every key is a context token
    assert f"{100 * on_context:.1f} % of it on the context" in body
    assert not shading(page)  # no token of the text itself is shaded
