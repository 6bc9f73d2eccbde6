"""Accessibility: every control on the Tab path, every field labelled, readable colours that differ
for colour-blind readers, and a page that fits a phone without sideways scrolling."""

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.ui.pages import find, open_page, score_in_page, screenshot, wait

CONTROLS = "a[href], button:not([disabled]), input, textarea, select, summary, [tabindex='0']"

# Give every visible, enabled control a number, so that focus can be followed Tab by Tab.
NUMBER_CONTROLS = f"""
const visible = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "hidden";
const controls = [...document.querySelectorAll("{CONTROLS}")].filter(visible);
controls.forEach((e, i) => e.dataset.control = i);
return controls.map((e) => e.id || e.tagName.toLowerCase() + ":" + e.textContent.trim().slice(0, 20));
"""


def relative_luminance(rgb: list[float]) -> float:
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in rgb)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: list[float], b: list[float]) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def rgb(css: str) -> list[float]:
    return [float(v) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3]]


def test_tab_reaches_every_control_and_the_tokens_then_arrows_move_along_them(page, server, tmp_path):
    open_page(page, server.url)
    score_in_page(page, "Keyboard users read the tokens too.")
    find(page, "#context-box summary").click()  # opened, so the context field is on the path as well
    names = page.execute_script(NUMBER_CONTROLS)
    assert {"score-text", "score-context", "score-file", "score-sliding", "score-button", "gen-prompt", "gen-seed",
            "gen-stop", "gen-button", "api-key"} - set(names) == {"api-key"}  # no key needed, none asked for
    assert any(name.startswith("span:") for name in names)  # the first token is on the Tab path
    page.find_element(By.TAG_NAME, "h1").click()
    reached = []
    for _ in range(len(names) + 3):  # keys to the page, not to an element (a file input takes keys as a path)
        ActionChains(page).send_keys(Keys.TAB).perform()
        reached.append(page.switch_to.active_element.get_attribute("data-control"))
    missing = [names[i] for i in range(len(names)) if str(i) not in reached]
    assert missing == []
    # the tokens are one Tab stop; the arrows move inside, and the details follow the focus
    first = find(page, "#tokens .tok")
    first.send_keys(Keys.ARROW_RIGHT)
    assert page.switch_to.active_element.get_attribute("data-index") == "1"
    assert "Token 2 of" in find(page, "#token-details").text
    screenshot(page, tmp_path, "keyboard")


def test_fields_are_labelled_and_the_colours_are_readable_and_distinct(page, server):
    open_page(page, server.url)
    unlabelled = page.execute_script("""return [...document.querySelectorAll("input, textarea, select")]
        .filter((e) => !e.labels.length && !e.getAttribute("aria-label")).map((e) => e.id)""")
    assert unlabelled == []
    assert page.execute_script("return document.documentElement.lang") == "en"
    # the bucket colours as the browser paints them (the legend's swatches and tokens share them)
    score_in_page(page, "Colours for every reader.")
    swatches = page.execute_script("""return [...document.querySelectorAll("#legend li")].map((li) =>
        [li.dataset.bucket, getComputedStyle(li.querySelector(".swatch")).backgroundColor])""")
    colours = {bucket: rgb(colour) for bucket, colour in swatches}
    assert list(colours) == ["top_10", "top_100", "top_1000", "rest", "none"]
    token_text = rgb(page.execute_script("return getComputedStyle(document.querySelector('.tok')).color"))
    for bucket in ("top_10", "top_100", "top_1000", "rest"):
        assert contrast(token_text, colours[bucket]) >= 4.5, bucket  # WCAG AA for the token text
    # Okabe & Ito's palette: told apart under the common colour-vision deficiencies; here at least by lightness
    # or hue, checked as distinct colours with clearly different luminance between neighbours
    lum = [relative_luminance(colours[b]) for b in ("top_10", "top_100", "top_1000", "rest")]
    assert len({tuple(colours[b]) for b in ("top_10", "top_100", "top_1000", "rest")}) == 4
    assert all(abs(a - b) > 0.05 for a, b in zip(lum, lum[1:], strict=False)), lum
    for css in ("body", "#model-info", ".hint", "button[type=submit]"):
        element = find(page, css)
        fg = rgb(element.value_of_css_property("color"))
        bg_css = page.execute_script("""let e = arguments[0];
            while (e && getComputedStyle(e).backgroundColor === "rgba(0, 0, 0, 0)") e = e.parentElement;
            return e ? getComputedStyle(e).backgroundColor : "rgb(255, 255, 255)";""", element)
        assert contrast(fg, rgb(bg_css)) >= 4.5, css


def test_the_page_fits_a_phone_without_sideways_scrolling(page, server, tmp_path):
    page.set_window_size(390, 844)
    width = page.execute_script("return window.innerWidth")
    assert width <= 400  # the viewport really is phone-sized
    open_page(page, server.url)
    score_in_page(page, "On a phone the page stacks: the text, then the details, the statistics and the "
                        "histogram, each as wide as the screen. " * 3)
    wait(page, lambda d: find(d, "#rank-histogram").size["width"] > 0, "no histogram")
    overflow = page.execute_script("""const root = document.documentElement;
        const wide = [...document.querySelectorAll("body *")]
          .filter((e) => e.getBoundingClientRect().right > innerWidth + 1);
        return [root.scrollWidth, root.clientWidth, wide.map((e) => e.id || e.className || e.tagName).slice(0, 5)]""")
    assert overflow[0] <= overflow[1] and overflow[2] == [], overflow
    assert find(page, "#rank-histogram").size["width"] <= width
    screenshot(page, tmp_path, "phone")
