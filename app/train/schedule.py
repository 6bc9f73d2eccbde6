"""A time budget that the learning-rate schedule knows about.

With --time-budget the cosine decay runs over the steps or the budget, whichever runs out first,
so a run on a slow or shared machine still ends annealed instead of being cut off at a high
learning rate. Without a budget the Trainer's own cosine schedule is used unchanged."""

import math
import time

import torch
from transformers import Trainer


class Clock:
    """The share of the time budget spent since training began, the same on every rank: under
    DDP each rank's clock reads a little differently, and the ranks must agree on the learning
    rate and on when to stop, so they take the largest reading (one tiny all-reduce per call)."""

    def __init__(self, budget_s: float | None):
        self.budget_s = budget_s
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()

    def fraction(self) -> float:
        if self.budget_s is None or self.started is None:
            return 0.0
        spent = torch.tensor([(time.monotonic() - self.started) / self.budget_s], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(spent, op=torch.distributed.ReduceOp.MAX)
        return float(spent.item())


def warmup_cosine(warmup_steps: int, total_steps: int, clock: Clock):
    """transformers' linear warm-up + cosine to zero, where progress is the larger of the steps'
    and the time budget's."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = max((step - warmup_steps) / max(1, total_steps - warmup_steps), clock.fraction())
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class BudgetTrainer(Trainer):
    """The Trainer, with the budget-aware schedule when the run has a time budget."""

    def __init__(self, *args, clock: Clock, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.clock.budget_s is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        factor = warmup_cosine(self.args.get_warmup_steps(num_training_steps), num_training_steps, self.clock)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        self._created_lr_scheduler = True
        return self.lr_scheduler
