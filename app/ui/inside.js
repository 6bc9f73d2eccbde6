// "Inside the model": for the focused token, what the model looked at when it predicted it, from
// /v1/score's `explanation`. Token t is predicted at the position before it (t - 1): its attention
// over the earlier tokens shades the text itself (a layer and a head picker; the heads' average by
// default), and its logit lens lists the likeliest next token after each layer, marking the layer
// where the prediction settles.

import {el, percent, visible} from "./dom.js";

const $ = (id) => document.getElementById(id);
const LISTED = 5;  // the positions attended to most, also listed in words (the shading is not read out)

let state = null;  // {result, byPosition, numContext, numLayers, numHeads}
let focused = null;  // index of the token on display

/** A new result: keep its explanation (or say why there is none) and reset the pickers. */
export function setExplanation(result, note) {
  state = null;
  focused = null;
  unshade();
  const explanation = result.explanation;
  $("inside-controls").hidden = !explanation;
  if (!explanation) {
    $("inside-body").replaceChildren(el("p", {class: "muted", "data-inside": "absent"},
      note || "Not explained: tick “Look inside the model” and score again."));
    return;
  }
  state = {
    result, numContext: result.num_context_tokens, numLayers: explanation.num_layers, numHeads: explanation.num_heads,
    byPosition: new Map(explanation.positions.map((entry) => [entry.position, entry])),
  };
  const layers = Array.from({length: state.numLayers}, (_, l) => el("option", {value: String(l)}, `${l + 1}`));
  $("inside-layer").replaceChildren(...layers);
  $("inside-layer").value = String(state.numLayers - 1);  // the last block's attention
  $("inside-head").replaceChildren(el("option", {value: "mean"}, "average of heads"),
    ...Array.from({length: state.numHeads}, (_, h) => el("option", {value: String(h)}, `head ${h + 1}`)));
  $("inside-body").replaceChildren(el("p", {class: "hint"}, "Hover, tap or focus a token to see which earlier " +
    "tokens the model attended to when it predicted it, and what it predicted after each layer."));
}

/** Token i is focused (or hovered): show the position that predicted it. */
export function showInside(i) {
  if (!state) return;
  focused = i;
  const position = state.numContext + i - 1;
  const entry = state.byPosition.get(position);
  if (!entry) {
    unshade();
    $("inside-body").replaceChildren(el("p", {"data-inside": "none"}, position < 0
      ? "Nothing comes before the first token: the model predicted nothing for it."
      : "This position was not explained."));
    return;
  }
  const token = state.result.tokens[i];
  $("inside-body").replaceChildren(
    el("p", {class: "hint"}, `Predicting ${visible(token)} (token ${i + 1}), from the position of `,
      el("span", {class: "token-text"}, visible(entry.token)), "."),
    ...attention(entry), ...lens(entry, token));
}

function unshade() {
  const tokens = $("tokens");
  tokens.classList.remove("attending");
  for (const span of tokens.querySelectorAll(".tok.attended")) {
    span.classList.remove("attended", "strong");
    span.style.removeProperty("--attn");
  }
}

/** Shade the text by the chosen layer's and head's weights; list the largest in words. */
function attention(entry) {
  unshade();
  if (!entry.attention) return [el("p", {class: "muted"}, "No attention in this explanation.")];
  const layer = entry.attention[Number($("inside-layer").value)];
  const head = $("inside-head").value;
  const pairs = head === "mean" ? layer.mean : layer.heads[Number(head)];
  const spans = $("tokens").children;
  const largest = Math.max(...pairs.map(([, weight]) => weight), 1e-9);
  let context = 0;
  for (const [position, weight] of pairs) {
    const t = position - state.numContext;
    if (t < 0) {
      context += weight;
      continue;
    }
    spans[t].classList.add("attended");
    spans[t].classList.toggle("strong", weight / largest > 0.75);  // white text on the darker shades
    spans[t].style.setProperty("--attn", (weight / largest).toFixed(3));  // CSSOM: allowed by the page's CSP
  }
  $("tokens").classList.toggle("attending", $("inside-shade").checked);
  const items = pairs.slice(0, LISTED).map(([position, weight]) => {
    const t = position - state.numContext;
    const text = t < 0 ? `context token ${position + 1}` : visible(state.result.tokens[t]);
    return el("li", {"data-position": String(position)}, el("span", {class: "token-text"}, text), ` ${percent(weight)}`);
  });
  const which = head === "mean" ? "the heads' average" : `head ${Number(head) + 1}`;
  const shown = pairs.length < entry.position + 1 ? ` (the ${pairs.length} it weighted most are shaded)` : "";
  const parts = [el("h5", {}, `Attention, layer ${Number($("inside-layer").value) + 1}, ${which}${shown}`),
    el("ol", {id: "attention-list", class: "attended-list"}, ...items)];
  if (context > 0) parts.push(el("p", {class: "hint"}, `${percent(context)} of it on the context.`));
  return parts;
}

/** The logit lens: the likeliest next token after each layer, and this token's probability there. */
function lens(entry, token) {
  if (!entry.lens) return [];
  const last = entry.lens.length - 1;
  const final = entry.lens[last].top[0].token;
  const rows = entry.lens.map((layer, l) => el("tr", l === entry.settled_layer ? {class: "settled"} : {},
    el("th", {scope: "row"}, l === 0 ? "0 (embeddings)" : l === last ? `${l} (output)` : String(l)),
    el("td", {}, el("span", {class: "token-text"}, visible(layer.top[0].token))),
    el("td", {class: "num"}, percent(layer.top[0].prob)),
    el("td", {class: "num"}, layer.next_token_prob == null ? "n/a" : percent(layer.next_token_prob))));
  const first = entry.first_top1_layer === entry.settled_layer ? ""
    : ` (first on top at layer ${entry.first_top1_layer})`;
  return [el("h5", {}, "Logit lens"),
    el("p", {id: "lens-summary", class: "hint"}, `The prediction ${visible(final)} settles at layer ` +
      `${entry.settled_layer}${first}.`),
    el("table", {id: "lens-table"},
      el("caption", {class: "hint"}, "The likeliest next token read after each layer"),
      el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "layer"), el("th", {scope: "col"}, "top token"),
        el("th", {scope: "col", class: "num"}, "probability"),
        el("th", {scope: "col", class: "num"}, `p(${visible(token)})`))),
      el("tbody", {}, ...rows))];
}

export function setupInside() {
  for (const id of ["inside-layer", "inside-head", "inside-shade"]) {
    $(id).addEventListener("change", () => {
      if (focused != null) showInside(focused);
    });
  }
}
