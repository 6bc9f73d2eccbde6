"""`gpt2-serve train`: the command line. Bad input ends with one line on stderr and exit code 2."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from app.train.spec import TrainError, TrainSpec, check_spec, parse_duration

Opt = typer.Option


def train(
    data: Annotated[list[Path], typer.Argument(help="Text files, directories of .txt/.md/.jsonl files, or .jsonl "
                                               "files (one JSON object per line).", show_default=False)],
    output: Annotated[Path, Opt("--output", "-o", help="The directory to write (a Hugging Face model directory).")],
    eval_data: Annotated[list[Path] | None, Opt(help="Held-out text (repeat for several); default: a random "
                                                "--eval-fraction of the training blocks.")] = None,
    eval_fraction: Annotated[float, Opt(help="Share of the blocks held out when there is no --eval-data.")] = 0.05,
    text_field: Annotated[str, Opt(help="Key of the text in .jsonl objects.")] = "text",
    unit: Annotated[str, Opt(help="What a document is in a text file: document (the file), paragraph (blank-line "
                             "separated) or line. <|endoftext|> follows every document.")] = "document",
    from_model: Annotated[str | None, Opt("--from", help="Fine-tune this model: gpt2, gpt2-medium, ... or a local "
                                          "Hugging Face directory. Default gpt2 unless a size is given.")] = None,
    config: Annotated[Path | None, Opt(help="Train a new model from this GPT-2 config.json.")] = None,
    n_layer: Annotated[int | None, Opt(help="New model: layers (default 12).")] = None,
    n_embd: Annotated[int | None, Opt(help="New model: embedding size (default 768).")] = None,
    n_head: Annotated[int | None, Opt(help="New model: attention heads (default 12).")] = None,
    context: Annotated[int | None, Opt(help="New model: context length, n_positions (default 1024).")] = None,
    dropout: Annotated[float | None, Opt(help="Dropout (default: 0 for a new model, the checkpoint's otherwise).")]
        = None,
    block_size: Annotated[int | None, Opt(help="Tokens per training example; default the model's context.")] = None,
    batch_size: Annotated[int, Opt(min=1, help="Blocks per batch per process.")] = 8,
    grad_accum: Annotated[int, Opt(min=1, help="Batches accumulated per optimizer step.")] = 1,
    lr: Annotated[float | None, Opt(help="Peak learning rate (default 6e-4 new model, 5e-5 fine-tuning).")] = None,
    weight_decay: Annotated[float, Opt(help="AdamW weight decay.")] = 0.1,
    warmup: Annotated[float, Opt(help="Linear warm-up: a fraction of the steps if below 1, else steps.")] = 0.05,
    epochs: Annotated[float, Opt(help="Passes over the training blocks (unless --max-steps).")] = 1.0,
    max_steps: Annotated[int | None, Opt(min=1, help="Optimizer steps (overrides --epochs).")] = None,
    time_budget: Annotated[str | None, Opt(help="Stop training after this long (900, 15m, 1h30m), keeping the "
                                           "best checkpoint.")] = None,
    eval_every: Annotated[int | None, Opt(min=1, help="Evaluate and checkpoint every N steps (default: 10 "
                                          "times per run).")] = None,
    eval_batches: Annotated[int | None, Opt(min=1, help="Evaluate during training on at most N batches of the "
                                            "held-out set (the final evaluation uses all of it).")] = None,
    patience: Annotated[int, Opt(min=0, help="Early stopping: stop after N evaluations without a lower held-out "
                                 "loss (0: never).")] = 0,
    precision: Annotated[str, Opt(help="auto (bf16 or fp16 on a GPU, fp32 on a CPU), fp32, bf16 or fp16.")] = "auto",
    gradient_checkpointing: Annotated[bool, Opt(help="Recompute activations in the backward pass (less memory).")]
        = False,
    seed: Annotated[int, Opt(help="Seed of the initialisation, the data split and the data order.")] = 42,
    save_total_limit: Annotated[int, Opt(min=1, help="Checkpoints kept (the best one is always kept).")] = 2,
    resume: Annotated[bool, Opt(help="Continue the run in --output from its last checkpoint.")] = False,
    overwrite: Annotated[bool, Opt(help="Replace an existing --output.")] = False,
) -> None:
    """Fine-tune GPT-2 on your text, or train one from scratch; the output directory is ready to serve.

    Run it under `torchrun --nproc_per_node=N` (or `accelerate launch`) for data-parallel training.
    """
    try:
        if unit not in ("document", "paragraph", "line"):
            raise TrainError(f"--unit must be document, paragraph or line, not {unit!r}")
        spec = TrainSpec(
            data=data, output=output, eval_data=eval_data or [], eval_fraction=eval_fraction, text_field=text_field,
            unit=unit, from_model=from_model, config=config, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
            context=context, dropout=dropout, block_size=block_size, batch_size=batch_size, grad_accum=grad_accum,
            lr=lr, weight_decay=weight_decay, warmup=warmup, epochs=epochs, max_steps=max_steps,
            time_budget=parse_duration(time_budget) if time_budget else None, eval_every=eval_every,
            eval_batches=eval_batches, patience=patience, precision=precision,
            gradient_checkpointing=gradient_checkpointing, seed=seed, save_total_limit=save_total_limit,
            resume=resume, overwrite=overwrite)
        check_spec(spec)  # before the training stack is imported: bad input fails in a moment
        from app.train.train import run

        run(spec)
    except TrainError as exc:
        print(f"gpt2-serve train: error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
