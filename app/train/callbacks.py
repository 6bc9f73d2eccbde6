"""Trainer callbacks: what the user sees and keeps (progress bar, metrics.jsonl), the time budget,
and a first-step gradient dump that the DDP test compares across process counts."""

import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

# When set, the first optimizer step's gradients and inputs of every rank go to <value>.rank<N>.pt
DUMP_GRADS_ENV = "GPT2_TRAIN_DUMP_GRADS"


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # exp(50) already says "untrained"; avoid overflow


class Monitor(TrainerCallback):
    """A progress bar (loss, eval perplexity, tokens/s, ETA) and one JSON line per log event.

    Tokens are the Trainer's own count (include_num_input_tokens_seen, summed over ranks);
    tokens/s divides those of this session by the time spent in training steps only (not in
    evaluation or checkpointing)."""

    def __init__(self, metrics_path: Path):
        self.metrics_path = metrics_path
        self.bar = None
        self.started = self.step_started = 0.0
        self.train_seconds = 0.0
        self.first_tokens = self.tokens_seen = 0
        self.last_loss = self.last_eval_ppl = None

    @property
    def tokens_per_second(self) -> float:
        return (self.tokens_seen - self.first_tokens) / self.train_seconds if self.train_seconds else 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.first_tokens = self.tokens_seen = state.num_input_tokens_seen  # after a resume: the checkpoint's
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True,
                            desc="training")

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        self.train_seconds += time.monotonic() - self.step_started
        self.tokens_seen = state.num_input_tokens_seen
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix(self.postfix(), refresh=False)

    def postfix(self) -> dict:
        shown = {"tok/s": f"{self.tokens_per_second:,.0f}"}
        if self.last_loss is not None:
            shown["loss"] = f"{self.last_loss:.3f}"
        if self.last_eval_ppl is not None:
            shown["eval_ppl"] = f"{self.last_eval_ppl:.1f}"
        return shown

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                  "elapsed_s": round(time.monotonic() - self.started, 3),
                  "tokens_seen": state.num_input_tokens_seen,
                  "tokens_per_s": round(self.tokens_per_second, 1), **logs}
        if "loss" in logs:
            self.last_loss = logs["loss"]
        if "eval_loss" in logs:
            self.last_eval_ppl = record["eval_perplexity"] = perplexity(logs["eval_loss"])
            if self.bar is not None:
                self.bar.write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}, "
                               f"perplexity {self.last_eval_ppl:.2f}")
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.set_postfix(self.postfix())
            self.bar.close()


class Finish(TrainerCallback):
    """Log, evaluate and save the last step (so the best-model choice sees it) and stop at the time
    budget. The clock is shared with the learning-rate schedule and agreed on by all ranks, so
    every rank stops at the same step."""

    def __init__(self, clock):
        self.clock = clock

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.clock.budget_s is not None and self.clock.fraction() >= 1.0:
            control.should_training_stop = True
        if control.should_training_stop or state.global_step >= state.max_steps:
            control.should_log = control.should_evaluate = control.should_save = True


class GradientDump(TrainerCallback):
    """Debugging aid for data-parallel runs: the inputs each rank saw in the first optimizer step and
    the gradients it held just before that step (after the all-reduce and clipping), in a file per rank."""

    def __init__(self, path: str):
        self.path = path
        self.inputs: list[torch.Tensor] = []
        self.hook = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, positional, keywords):
            if module.training and state.global_step == 0:
                self.inputs.append(keywords["input_ids"].detach().clone())

        self.hook = model.register_forward_pre_hook(record, with_kwargs=True)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step != 0:
            return
        self.hook.remove()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}
        torch.save({"rank": rank, "world_size": world, "inputs": self.inputs, "grads": grads},
                   f"{self.path}.rank{rank}.pt")


def dump_requested() -> str | None:
    return os.environ.get(DUMP_GRADS_ENV) or None
