// Wiring: the served model, the API key, errors, and the two sections (Score, Generate).

import {ApiError, apiKey, getJSON, setApiKey} from "./api.js";
import {score, setupScore} from "./score.js";
import {setupGenerate} from "./generate.js";

const $ = (id) => document.getElementById(id);

function showKeyPanel(note) {
  $("key-panel").hidden = false;
  if (note) $("key-note").textContent = note;
}

/** Show an error in its box, with the API's own message; a 401 also opens the API-key field. */
function onError(box, error) {
  box.textContent = error instanceof ApiError ? error.describe() : error.message;
  box.hidden = false;
  if (error.status === 401) {
    showKeyPanel(apiKey() ? "The service refused this API key: check it and enter it again."
      : "This service requires an API key. It is kept in this tab only (sessionStorage) and sent as " +
        "'Authorization: Bearer …' with every request.");
    $("api-key").focus();
  }
}

function clearError(box) {
  box.hidden = true;
  box.textContent = "";
}

const handlers = {onError, clearError};

async function loadModel() {
  clearError($("page-error"));
  try {
    const card = (await getJSON("v1/models")).data[0];
    const millions = (card.num_parameters / 1e6).toFixed(1);
    $("model-info").textContent = `Model ${card.id} · ${card.device} · ${card.dtype} · context ${card.max_model_len} ` +
      `tokens · ${millions} M parameters`;
    $("dummy-banner").hidden = card.load_format !== "dummy";
  } catch (error) {
    $("model-info").textContent = "Model unknown.";
    onError($("page-error"), error);
    if (error.status === 503) setTimeout(loadModel, 1000 * Number(error.retryAfter || 5));  // still loading
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("api-key").value.trim());
  $("api-key").value = "";
  $("key-note").textContent = apiKey() ? "Key set for this tab." : "No key set.";
  loadModel();
});
$("forget-key").addEventListener("click", () => {
  setApiKey("");
  $("key-note").textContent = "Key forgotten.";
});
if (apiKey()) showKeyPanel("A key is set for this tab.");

setupScore(handlers);
setupGenerate(handlers, (input) => {
  $("score-text").value = input.text;
  $("score-context").value = input.context;
  $("context-box").open = Boolean(input.context);
  $("score").scrollIntoView();
  score(input, handlers).then(() => $("result-title").focus());
});
loadModel();
