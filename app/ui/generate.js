// The Generate section: POST /v1/completions with stream=true; the text grows as chunks arrive.

import {streamCompletion} from "./api.js";

const $ = (id) => document.getElementById(id);
const FINISH = {stop: "stopped at the end-of-text token or a stop string", length: "reached max tokens"};

let controller = null;  // aborts the running stream (the Stop button)

/** The number in an <input>, or undefined when it is empty (then the API's default applies). */
function number(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function request() {
  const body = {
    prompt: $("gen-prompt").value,
    max_tokens: number("gen-max-tokens"),
    temperature: number("gen-temperature"),
    top_p: number("gen-top-p"),
    top_k: number("gen-top-k"),
    seed: number("gen-seed"),
  };
  const stop = $("gen-stop").value;
  if (stop) body.stop = stop.split("|").map((s) => s.replace(/\\n/g, "\n")).filter(Boolean).slice(0, 4);
  return body;
}

async function generate({onError, clearError}) {
  const status = $("gen-status"), completion = $("gen-completion");
  clearError($("gen-error"));
  const body = request();
  $("gen-prompt-echo").textContent = body.prompt;
  completion.replaceChildren();
  $("gen-button").setAttribute("aria-disabled", "true");
  $("send-to-score").disabled = true;
  $("gen-stop-button").disabled = false;
  status.textContent = "Generating…";
  controller = new AbortController();
  let finish = null, chunks = 0;
  try {
    for await (const chunk of streamCompletion(body, {signal: controller.signal})) {
      for (const choice of chunk.choices) {
        if (choice.text) completion.append(choice.text);  // one text node per chunk
        finish = choice.finish_reason || finish;
      }
      chunks += 1;
    }
    status.textContent = `Done: ${FINISH[finish] || finish || "finished"} (${chunks} chunks).`;
  } catch (error) {
    if (error.name === "AbortError") status.textContent = `Stopped after ${chunks} chunks.`;
    else {
      status.textContent = "";
      onError($("gen-error"), error);
    }
  } finally {
    controller = null;
    $("gen-button").removeAttribute("aria-disabled");
    if (document.activeElement === $("gen-stop-button")) $("gen-button").focus();  // it is about to be disabled
    $("gen-stop-button").disabled = true;
    $("send-to-score").disabled = !completion.textContent;
  }
}

export function setupGenerate(handlers, sendToScore) {
  $("generate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!controller) generate(handlers);
  });
  $("gen-prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!controller) generate(handlers);
    }
  });
  $("gen-stop-button").addEventListener("click", () => controller?.abort());
  // the completion is scored given its prompt, as the model saw it while generating
  $("send-to-score").addEventListener("click", () => sendToScore({
    text: $("gen-completion").textContent, context: $("gen-prompt-echo").textContent,
  }));
}
