// The Score section: POST /v1/score, then the text coloured token by token, the details of the
// focused token, the statistics, the judge's verdict (when one is loaded) and the rank histogram.

import {ApiError, postJSON} from "./api.js";
import {BUCKETS, bucketOf} from "./buckets.js";
import {el, fixed, percent, visible} from "./dom.js";
import {drawHistogram} from "./histogram.js";
import {setExplanation, setupInside, showInside} from "./inside.js";

const TOP_ALTERNATIVES = 5;
// explain: per layer and head, the 16 positions attended to most (whole rows for texts up to 16
// tokens), and the 3 likeliest tokens of the logit lens at each layer
const EXPLAIN = {attention_top_k: 16, lens_top_k: 3};
const $ = (id) => document.getElementById(id);

let current = null;  // the result on display: {result, response}

/** The bytes of a "bytes:\\xNN..." token: part of a UTF-8 character that GPT-2 split over tokens. */
function tokenBytes(token) {
  return Uint8Array.from(token.slice(6).split("\\x").filter(Boolean), (hex) => parseInt(hex, 16));
}

/**
 * The text each token adds to the page. A streaming decoder turns byte tokens back into the
 * characters they complete, so the text reads as it was written; a byte token that completes no
 * character shows as "·".
 */
function displayTexts(tokens) {
  const decoder = new TextDecoder();
  let pending = false;
  return tokens.map((token) => {
    if (token.startsWith("bytes:")) {
      pending = true;
      return decoder.decode(tokenBytes(token), {stream: true}) || "·";
    }
    const flushed = pending ? decoder.decode() : "";  // an unfinished character becomes U+FFFD
    pending = false;
    return flushed + token;
  });
}

function renderLegend(result) {
  const counts = Object.fromEntries(BUCKETS.map((b) => [b.id, 0]));
  let unscored = 0;
  for (const rank of result.ranks) {
    if (rank == null) unscored += 1;
    else counts[bucketOf(rank).id] += 1;
  }
  const scored = result.ranks.length - unscored;
  const items = BUCKETS.map((b) => el("li", {"data-bucket": b.id},
    el("span", {class: `swatch b-${b.id}`, "aria-hidden": "true"}),
    `${b.label}: ${counts[b.id]} (${scored ? percent(counts[b.id] / scored) : "n/a"})`));
  if (unscored) {
    items.push(el("li", {"data-bucket": "none"}, el("span", {class: "swatch b-none", "aria-hidden": "true"}),
      `not scored: ${unscored} (nothing before it)`));
  }
  $("legend").replaceChildren(...items);
}

function renderTokens(result) {
  const texts = displayTexts(result.tokens);
  const spans = result.tokens.map((token, i) => {
    const rank = result.ranks[i];
    const bucket = bucketOf(rank);
    const text = texts[i];
    const shown = /^\s*$/.test(text) && text.includes("\n") ? `↵${text}` : text;
    const span = el("span", {
      class: `tok b-${bucket ? bucket.id : "none"}${token.startsWith("bytes:") ? " bytes" : ""}`,
      tabindex: i === 0 ? "0" : "-1",
      "data-index": String(i),
      "data-bucket": bucket ? bucket.id : "none",
      "aria-label": `${visible(token)}: ${rank == null ? "not scored" : `rank ${rank}, ${bucket.label}`}`,
    }, shown);
    return span;
  });
  $("tokens").replaceChildren(...spans);
}

function showDetails(i) {
  const {result} = current;
  const token = result.tokens[i];
  const rank = result.ranks[i];
  const logprob = result.token_logprobs[i];
  const entropy = result.entropies ? result.entropies[i] : null;
  const box = $("token-details");
  const parts = [el("h4", {id: "details-title"}, `Token ${i + 1} of ${result.tokens.length}`),
    el("p", {}, el("span", {class: "token-text"}, visible(token)), ` id ${result.token_ids[i]}`)];
  if (rank == null) {
    parts.push(el("p", {}, "Not scored: nothing comes before the first token. Give a context to score it."));
  } else {
    const facts = el("dl", {class: "stats"},
      el("dt", {}, "probability"), el("dd", {}, `${percent(Math.exp(logprob))}`),
      el("dt", {}, "logprob"), el("dd", {}, fixed(logprob, 3)),
      el("dt", {}, "rank"), el("dd", {}, `${rank.toLocaleString("en")} (${bucketOf(rank).label})`),
      el("dt", {}, "entropy here"), el("dd", {}, entropy == null ? "n/a" : `${fixed(entropy)} nats`));
    parts.push(facts);
    const top = result.top_logprobs ? result.top_logprobs[i] : null;
    if (top) {
      const rows = top.map((alt) => el("tr", alt.token_id === result.token_ids[i] ? {class: "actual"} : {},
        el("td", {}, el("span", {class: "token-text"}, visible(alt.token))),
        el("td", {class: "num"}, percent(Math.exp(alt.logprob)))));
      parts.push(el("table", {}, el("caption", {class: "hint"}, "The likeliest tokens here (this one in bold)"),
        el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "token"), el("th", {scope: "col", class: "num"}, "probability"))),
        el("tbody", {}, ...rows)));
    }
  }
  box.replaceChildren(...parts);
  for (const node of $("tokens").querySelectorAll(".tok.selected")) node.classList.remove("selected");
  $("tokens").children[i].classList.add("selected");
  showInside(i);
}

function renderStats(result) {
  const d = result.detection;
  const rows = [
    ["tokens scored", result.num_tokens.toLocaleString("en")],
    ["perplexity", fixed(result.perplexity)],
    ["mean logprob", fixed(result.mean_logprob, 3)],
  ];
  if (d) {
    rows.push(["mean log-rank (lower: more machine-like)", fixed(d.mean_log_rank, 3)],
      ["mean entropy (nats)", fixed(d.mean_entropy, 3)],
      ["Fast-DetectGPT (higher: more machine-like)", fixed(d.fast_detect_gpt, 2)]);
  }
  if (result.num_windows > 1) rows.push(["sliding windows", String(result.num_windows)]);
  $("score-stats").replaceChildren(...rows.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
}

/** The trained judge (GPT2_DETECTOR): detection.judge and response.detector; absent means no judge is loaded. */
function renderVerdict(result, response) {
  const judge = result.detection ? result.detection.judge : null;
  const detector = response.detector;
  const body = $("verdict-body");
  if (!judge) {
    const why = detector && detector.loaded ? "The judge gave no verdict for this text."
      : (detector && detector.message) || "No trained judge is loaded (GPT2_DETECTOR).";
    body.replaceChildren(el("p", {class: "muted", "data-judge": "absent"}, why,
      " The statistics alone are not a verdict: calibrate them first (docs/scoring.md)."));
    return;
  }
  const machine = judge.verdict === "machine";
  const parts = [
    el("p", {class: "verdict-line", "data-judge": judge.verdict},
      machine ? "Likely machine-written" : "Likely human-written"),
    el("label", {for: "judge-meter"}, `machine probability ${percent(judge.machine_probability)}`),
    el("meter", {id: "judge-meter", min: "0", max: "1", low: String(judge.threshold), optimum: "0",
                 value: String(judge.machine_probability)}),
    el("p", {class: "hint"}, `threshold ${judge.threshold}${detector && detector.name ? `, judge ${detector.name}` : ""}`),
  ];
  if (judge.top_features && judge.top_features.length) {
    const rows = judge.top_features.map((f) => el("tr", {},
      el("td", {}, f.name), el("td", {class: "num"}, fixed(f.value, 3)),
      el("td", {class: "num"}, `${f.contribution >= 0 ? "+" : "−"}${fixed(Math.abs(f.contribution), 2)}`)));
    parts.push(el("table", {id: "judge-features"},
      el("caption", {class: "hint"}, "What weighed most (+ towards machine)"),
      el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "feature"), el("th", {scope: "col", class: "num"}, "value"),
        el("th", {scope: "col", class: "num"}, "contribution"))),
      el("tbody", {}, ...rows)));
  }
  body.replaceChildren(...parts);
}

function render(response) {
  const result = response.data[0];
  current = {result, response};
  renderLegend(result);
  renderTokens(result);
  renderStats(result);
  renderVerdict(result, response);
  $("histogram-summary").textContent = drawHistogram($("rank-histogram"), result.ranks);
  setExplanation(result, response.explainNote);
  $("token-details").replaceChildren(el("h4", {id: "details-title"}, "Token details"),
    el("p", {class: "hint"}, "Hover, tap or focus a token (Tab to the text, then ← →, Home, End) to see its " +
      "probability, rank, entropy and the likeliest alternatives."));
  $("score-result").hidden = false;
}

function moveFocus(event) {
  const spans = $("tokens").children;
  const i = Number(document.activeElement?.dataset?.index ?? -1);
  if (i < 0 || !spans.length) return;
  const next = {ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: spans.length - 1}[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const target = spans[Math.max(0, Math.min(spans.length - 1, next))];
  spans[i].tabIndex = -1;  // roving tabindex: the text is one stop of the Tab order
  target.tabIndex = 0;
  target.focus();
}

/**
 * POST /v1/score, with explain when asked. A text too long to explain within the service's limits
 * (a 400 about `explain`) is scored without it, and the response says why (explainNote).
 */
async function scoreExplained(body, explain) {
  if (!explain || body.window) return postJSON("v1/score", body);
  try {
    return await postJSON("v1/score", {...body, explain: EXPLAIN});
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 400 && String(error.param).startsWith("explain"))) throw error;
    return {...await postJSON("v1/score", body), explainNote: `Not explained: ${error.message}`};
  }
}

/** Score {text, context}: the form's fields, or what Generate sends over. */
export async function score({text, context}, {onError, clearError}) {
  const status = $("score-status");
  if ($("score-button").getAttribute("aria-disabled") === "true") return;  // one score at a time
  clearError($("score-error"));
  if (!text) {
    onError($("score-error"), new Error("Type or paste a text to score first."));
    return;
  }
  const body = {input: text, top_logprobs: TOP_ALTERNATIVES, detect: true};
  if (context) body.context = context;
  if ($("score-sliding").checked) body.window = "sliding";
  $("score-button").setAttribute("aria-disabled", "true");
  status.textContent = "Scoring…";
  try {
    const response = await scoreExplained(body, $("score-explain").checked);
    render(response);
    status.textContent = `Scored ${response.data[0].num_tokens} tokens.`;
  } catch (error) {
    status.textContent = "";
    onError($("score-error"), error);
  } finally {
    $("score-button").removeAttribute("aria-disabled");
  }
}

export function setupScore(handlers) {
  const form = $("score-form");
  const submit = () => score({text: $("score-text").value, context: $("score-context").value}, handlers);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  for (const id of ["score-text", "score-context"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        submit();
      }
    });
  }
  $("score-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) $("score-text").value = await file.text();
  });
  const tokens = $("tokens");
  const detailsOf = (event) => {
    const index = event.target.dataset?.index;
    if (index !== undefined && current) showDetails(Number(index));
  };
  tokens.addEventListener("focusin", (event) => {
    for (const span of tokens.querySelectorAll('[tabindex="0"]')) span.tabIndex = -1;
    event.target.tabIndex = 0;  // roving tabindex: Tab comes back to the token last focused
    detailsOf(event);
  });
  tokens.addEventListener("mouseover", detailsOf);
  tokens.addEventListener("keydown", moveFocus);
  setupInside();
}
