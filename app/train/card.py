"""The model card (README.md in the output directory) and the end-of-run summary line."""

from pathlib import Path


def summary_text(s: dict) -> str:
    return (f"done: {s['steps']:,} steps, {s['tokens_seen']:,} tokens seen in {s['train_seconds']:,.0f} s of training "
            f"({s['tokens_per_second']:,.0f} tokens/s on {s['processes']} process(es), {s['wall_seconds']:,.0f} s "
            f"wall); held-out perplexity {s['eval_perplexity']:,.2f} (unigram baseline "
            f"{s['unigram_perplexity']:,.1f}); model in {s['output']}"
            + (f", loss plot {s['plot']}" if s.get("plot") else ""))


def write_card(path: Path, s: dict) -> None:
    settings = s["settings"]
    shape = s["shape"]
    origin = f"fine-tuned from `{s['start']}`" if s["start"] != "scratch" else "trained from scratch"
    files = ", ".join(f"`{f}`" for f in s["data"]["files"])
    held_out = (", ".join(f"`{f}`" for f in s["data"]["eval_files"]) if s["data"]["eval_files"]
                else f"a random {settings['eval_fraction']:.0%} of the blocks (seed {settings['seed']})")
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in settings.items() if v is not None and v is not False and v != [])
    text = f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, gpt2-serve]
---

# GPT-2 {origin}

A GPT-2 ({s['parameters']:,} parameters: {shape['n_layer']} layers, {shape['n_embd']} dimensions,
{shape['n_head']} heads, context {shape['n_positions']}, vocabulary {shape['vocab_size']:,}) {origin}
with `gpt2-serve train`.

## Data

- Training text: {files} ({s['data']['documents']:,} documents, {s['data']['train_tokens']:,} tokens in
  blocks of {s['data']['block_size']}; `<|endoftext|>` after every document).
- Held out: {held_out} ({s['data']['eval_tokens']:,} tokens).

## Results

| | |
| --- | --- |
| held-out loss | {s['eval_loss']:.4f} nats/token |
| held-out perplexity | {s['eval_perplexity']:,.2f} |
| add-one unigram baseline perplexity (same split) | {s['unigram_perplexity']:,.1f} |
| optimizer steps | {s['steps']:,} ({s['epochs']} epochs) |
| tokens seen | {s['tokens_seen']:,} |
| training time | {s['train_seconds']:,.0f} s on {s['processes']} process(es), {s['tokens_per_second']:,.0f} tokens/s |

The weights are those of the checkpoint with the lowest held-out loss. Curves: `loss.png`; every
logged value: `metrics.jsonl`.

## Settings

| setting | value |
| --- | --- |
{rows}

## Use

```bash
GPT2_MODEL={s['output']} gpt2-serve serve
```

or `GPT2LMHeadModel.from_pretrained("{s['output']}")` in transformers.
"""
    path.write_text(text)
