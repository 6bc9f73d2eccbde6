"""One training run on the Hugging Face Trainer, from checked input to a directory the server loads.

The same code runs in one process or data-parallel under `torchrun` / `accelerate launch`: the
Trainer (through accelerate) finds the process group from the launcher's environment, shards
every global batch across the ranks and all-reduces the gradients. Nothing here asks which.
"""

import json
import math
import shutil
import time
from pathlib import Path

from app.train import card, data, model, plot
from app.train.callbacks import Finish, GradientDump, Monitor, dump_requested, perplexity
from app.train.spec import TrainError, TrainSpec, check_spec


def run(spec: TrainSpec) -> dict:
    """Train as `spec` says, write spec.output, return the summary (also in summary.json)."""
    started = time.monotonic()
    check_spec(spec)  # before the heavy imports: bad input fails fast
    import datasets
    from accelerate import PartialState
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    # our own status lines and progress bar instead of the libraries' bars (and clean one-line errors)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.get_logger("transformers.trainer").addFilter(quiet_tied_head_warning)
    # under torchrun: joins the process group. accelerate treats a CPU-only launch as distributed
    # only when told it runs on the CPU; otherwise each process would train alone on the same data
    state = PartialState(cpu=cpu_only())
    say = print if state.is_main_process else (lambda *a, **k: None)

    tokenizer = model.load_tokenizer(spec)
    config = model.model_config(spec, len(tokenizer))
    block_size = model.block_size(spec, config)
    with state.main_process_first():  # rank 0 tokenizes into the datasets cache, the others read it
        blocks = data.prepare(spec, tokenizer, block_size)
    unigram = None
    if state.is_main_process:
        prepare_output(spec)  # all input is good: only now is anything written
        unigram = data.unigram_perplexity(blocks.train, blocks.eval, len(tokenizer))
        print(f"data: {blocks.documents:,} documents -> {blocks.train_tokens:,} training tokens and "
              f"{blocks.eval_tokens:,} held-out tokens in blocks of {block_size}; add-one unigram baseline "
              f"perplexity on the held-out tokens: {unigram:,.1f}")

    set_seed(spec.seed)
    lm = model.build_model(spec, config)
    trainer = build_trainer(spec, lm, tokenizer, blocks, state.num_processes)
    steps, per_step = trainer.args.max_steps, tokens_per_step(spec, block_size, state.num_processes)
    say(f"model: {'fine-tuning ' + spec.start if spec.start else 'new GPT-2'} ({lm.num_parameters():,} parameters, "
        f"{config.n_layer} layers, {config.n_embd} dims, {config.n_head} heads, context {config.n_positions}); "
        f"{steps:,} steps of {per_step:,} tokens on {state.num_processes} process(es)")

    trainer.train(resume_from_checkpoint=True if spec.resume else None)
    trainer.save_model(str(spec.output))  # the checkpoint with the lowest held-out loss
    summary = None
    if state.is_main_process:
        monitor = next(c for c in trainer.callback_handler.callbacks if isinstance(c, Monitor))
        eval_loss = held_out_loss(spec.output, blocks.eval, spec.batch_size, trainer.args.device)
        with (spec.output / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": trainer.state.global_step, "final_eval_loss": eval_loss,
                                "final_eval_perplexity": perplexity(eval_loss)}) + "\n")
        summary = finish_output(spec, trainer, tokenizer, blocks, config, eval_loss, unigram, monitor, started)
        say(card.summary_text(summary))
    state.wait_for_everyone()
    return summary


def held_out_loss(model_dir: Path, held_out, batch_size: int, device) -> float:
    """Mean next-token loss of the saved model on every held-out block, in float32: the figure is
    that of the files the server will load, whatever precision training ran in."""
    import torch
    from transformers import GPT2LMHeadModel, default_data_collator

    lm = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    lm.loss_type = "ForCausalLM"  # see model.build_model
    batches = torch.utils.data.DataLoader(held_out, batch_size=batch_size, collate_fn=default_data_collator)
    total, blocks = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            n = len(batch["input_ids"])  # every block has the same number of targets
            total += lm(**{k: v.to(device) for k, v in batch.items()}).loss.item() * n
            blocks += n
    return total / blocks


def quiet_tied_head_warning(record) -> bool:
    """Loading the best checkpoint warns that lm_head.weight is missing: it is tied to (the same
    tensor as) transformer.wte.weight, which checkpoints store once, so it was restored. Drop that."""
    return record.getMessage() != "There were missing keys in the checkpoint model loaded: ['lm_head.weight']."


def cpu_only() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps and mps.is_available())


def tokens_per_step(spec: TrainSpec, block_size: int, world_size: int) -> int:
    return spec.batch_size * spec.grad_accum * world_size * block_size


def build_trainer(spec: TrainSpec, lm, tokenizer, blocks, world_size: int):
    from transformers import EarlyStoppingCallback, PrinterCallback, default_data_collator

    from app.train.schedule import BudgetTrainer, Clock

    batches_per_epoch = math.ceil(len(blocks.train) / (spec.batch_size * world_size))
    steps = spec.max_steps or max(1, math.ceil(spec.epochs * batches_per_epoch / spec.grad_accum))
    eval_every = spec.eval_every or max(1, steps // 10)
    held_out = blocks.eval
    if spec.eval_batches:
        keep = min(len(held_out), spec.eval_batches * spec.batch_size * world_size)
        held_out = held_out.shuffle(seed=spec.seed).select(range(keep))  # a sample of all of it, not its start
    clock = Clock(spec.time_budget)
    callbacks = [Monitor(spec.output / "metrics.jsonl"), Finish(clock)]
    if spec.patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=spec.patience))
    if dump_requested():
        callbacks.append(GradientDump(dump_requested()))
    trainer = BudgetTrainer(model=lm, args=training_arguments(spec, steps, eval_every), train_dataset=blocks.train,
                            eval_dataset=held_out, data_collator=default_data_collator, processing_class=tokenizer,
                            callbacks=callbacks, clock=clock)
    trainer.remove_callback(PrinterCallback)  # Monitor prints instead
    return trainer


def training_arguments(spec: TrainSpec, steps: int, eval_every: int):
    import torch
    from transformers import TrainingArguments

    try:
        return TrainingArguments(
            output_dir=str(spec.output / "checkpoints"),
            per_device_train_batch_size=spec.batch_size, per_device_eval_batch_size=spec.batch_size,
            gradient_accumulation_steps=spec.grad_accum, max_steps=steps,
            # AdamW with GPT-2/3's betas, linear warm-up then cosine decay to zero (by the time budget
            # too, if there is one: schedule.py)
            optim="adamw_torch", learning_rate=spec.lr or (5e-5 if spec.start else 6e-4),
            weight_decay=spec.weight_decay, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=spec.max_grad_norm,
            lr_scheduler_type="cosine", warmup_steps=spec.warmup,
            **precision_flags(spec.precision), **checkpointing_flag(TrainingArguments, spec.gradient_checkpointing),
            seed=spec.seed, data_seed=spec.seed,
            logging_steps=max(1, min(eval_every, steps // 100)), logging_first_step=True,
            eval_strategy="steps", eval_steps=eval_every, save_strategy="steps", save_steps=eval_every,
            save_total_limit=spec.save_total_limit, load_best_model_at_end=True,
            metric_for_best_model="eval_loss", greater_is_better=False,
            include_num_input_tokens_seen="all", report_to="none", disable_tqdm=True,
            use_cpu=cpu_only(), dataloader_pin_memory=torch.cuda.is_available(), ddp_find_unused_parameters=False)
    except ValueError as exc:  # e.g. fp16 or bf16 the device cannot do
        raise TrainError(str(exc).splitlines()[0]) from exc


def checkpointing_flag(arguments_class, on: bool) -> dict:
    """Activation (gradient) checkpointing, under the name this transformers has (renamed in 5.x)."""
    new_name = "activation_checkpointing" in arguments_class.__dataclass_fields__
    return {"activation_checkpointing" if new_name else "gradient_checkpointing": on}


def precision_flags(name: str) -> dict:
    """auto: bf16 on a GPU that has it, else fp16 on a GPU, fp32 on a CPU."""
    import torch

    if name == "auto":
        name = "fp32"
        if torch.cuda.is_available():
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name not in ("fp32", "bf16", "fp16"):
        raise TrainError(f"--precision must be auto, fp32, bf16 or fp16, not {name!r}")
    return {"bf16": name == "bf16", "fp16": name == "fp16"}


def prepare_output(spec: TrainSpec) -> None:
    from transformers.trainer_utils import get_last_checkpoint

    spec.output.mkdir(parents=True, exist_ok=True)
    metrics = spec.output / "metrics.jsonl"
    if spec.overwrite:  # a stale checkpoint must not be resumed, nor old metrics plotted
        shutil.rmtree(spec.output / "checkpoints", ignore_errors=True)
        metrics.unlink(missing_ok=True)
    if spec.resume:
        last = get_last_checkpoint(str(spec.output / "checkpoints"))
        # the steps logged after that checkpoint are run again: keep one record of each
        step = int(Path(last).name.split("-")[-1])
        if metrics.is_file():
            lines = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= step]
            metrics.write_text("".join(line + "\n" for line in lines))


def finish_output(spec, trainer, tokenizer, blocks, config, eval_loss, unigram, monitor, started) -> dict:
    """Tokenizer files the server reads, summary.json, loss.png and the model card."""
    out = spec.output
    # safetensors writes the weights owner-only (0600); whoever serves them may be another user
    (out / "model.safetensors").chmod(0o644)
    tokenizer.model_max_length = config.n_positions
    tokenizer.save_pretrained(str(out))  # tokenizer.json; transformers 5 no longer writes vocab/merges
    source = Path(model.tokenizer_dir(spec))
    for name in ("vocab.json", "merges.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    summary = {
        "output": str(out), "start": spec.start or "scratch", "parameters": trainer.model.num_parameters(),
        "shape": {k: getattr(config, k) for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")},
        "data": {"files": [str(p) for p in spec.data], "eval_files": [str(p) for p in spec.eval_data],
                 "documents": blocks.documents, "block_size": blocks.block_size,
                 "train_tokens": blocks.train_tokens, "eval_tokens": blocks.eval_tokens},
        "steps": trainer.state.global_step, "tokens_seen": trainer.state.num_input_tokens_seen,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "train_seconds": round(monitor.train_seconds, 1), "wall_seconds": round(time.monotonic() - started, 1),
        "tokens_per_second": round(monitor.tokens_per_second, 1), "processes": trainer.args.world_size,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "eval_loss": eval_loss, "eval_perplexity": perplexity(eval_loss), "unigram_perplexity": unigram,
        "plot": plot.loss_plot(out / "metrics.jsonl", out / "loss.png"),
        "settings": spec.as_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    card.write_card(out / "README.md", summary)
    return summary
