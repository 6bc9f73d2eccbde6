"""What one training run is asked to do, checked before anything heavy is loaded."""

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

# GPT-2 small: what a model trained from scratch looks like unless told otherwise
DEFAULT_SHAPE = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024)
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst"}
JSONL_SUFFIXES = {".jsonl"}


class TrainError(ValueError):
    """Bad input to `gpt2-serve train`: the CLI prints the message on one line and exits 2."""


@dataclass
class TrainSpec:
    data: list[Path]
    output: Path
    eval_data: list[Path] = field(default_factory=list)
    eval_fraction: float = 0.05
    text_field: str = "text"
    unit: str = "document"  # what one text-file sample is: the whole file, a paragraph or a line
    # start: a pretrained model (hub id or directory) or a new one
    from_model: str | None = None
    config: Path | None = None
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    context: int | None = None  # n_positions of a new model
    dropout: float | None = None
    block_size: int | None = None
    # optimisation
    batch_size: int = 8
    grad_accum: int = 1
    lr: float | None = None
    weight_decay: float = 0.1
    warmup: float = 0.05  # below 1: a fraction of the steps; otherwise a number of steps
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int | None = None
    time_budget: float | None = None  # seconds
    eval_every: int | None = None
    eval_batches: int | None = None  # cap the held-out set at this many batches
    patience: int = 0  # early stopping: evaluations without improvement; 0 = off
    precision: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 42
    save_total_limit: int = 2
    resume: bool = False
    overwrite: bool = False

    @property
    def from_scratch(self) -> bool:
        return self.config is not None or any(
            v is not None for v in (self.n_layer, self.n_embd, self.n_head, self.context))

    @property
    def start(self) -> str:
        """A hub id or directory for fine-tuning (gpt2 unless told otherwise); '' for a new model."""
        return "" if self.from_scratch else (self.from_model or "gpt2")

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, list) else v)
                for k, v in asdict(self).items()}


def check_spec(spec: TrainSpec) -> None:
    """Everything that can be said about the request without reading data or a model."""
    if spec.from_model and spec.from_scratch:
        raise TrainError("--from (fine-tune) and --config / --n-layer / --n-embd / --n-head / --context "
                         "(train from scratch) exclude each other; choose one")
    if spec.resume and spec.overwrite:
        raise TrainError("--resume continues the run in the output directory and --overwrite replaces it; "
                         "choose one")
    if not 0 < spec.eval_fraction < 1:
        raise TrainError(f"--eval-fraction must be between 0 and 1, not {spec.eval_fraction}")
    for path in [*spec.data, *spec.eval_data]:
        if not path.exists():
            raise TrainError(f"no such file or directory: {path}")
    for paths in (spec.data, spec.eval_data):
        files = [f for group in list_files(paths) for f in group]
        if files and all(blank(f) for f in files):
            raise TrainError(f"no text in {', '.join(str(p) for p in paths)}: every file is empty")
    if spec.config is not None and not spec.config.is_file():
        raise TrainError(f"no such config file: {spec.config}")
    context = known_context(spec)
    if spec.block_size is not None and context is not None and spec.block_size > context:
        raise TrainError(f"--block-size {spec.block_size} is above the model's context of {context} tokens "
                         f"(n_positions)")
    check_output(spec)


def list_files(paths: list[Path]) -> tuple[list[str], list[str]]:
    """(text files, JSONL files). A directory contributes its text and .jsonl files, recursively;
    a file named explicitly is JSONL if it ends in .jsonl and text otherwise."""
    text, jsonl = [], []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and p.suffix in TEXT_SUFFIXES | JSONL_SUFFIXES)
            if not found:
                raise TrainError(f"{path} holds no {', '.join(sorted(TEXT_SUFFIXES | JSONL_SUFFIXES))} files")
        else:
            found = [path]
        for file in found:
            (jsonl if file.suffix in JSONL_SUFFIXES else text).append(str(file))
    return text, jsonl


def blank(file: str) -> bool:
    """Nothing but white space (read only up to the first character that is not)."""
    with open(file, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def known_context(spec: TrainSpec) -> int | None:
    """n_positions of the starting model, when a JSON file says it (None for a hub id: checked later)."""
    if spec.from_scratch and spec.context is not None:
        return spec.context
    config = spec.config if spec.from_scratch else Path(spec.start) / "config.json"
    if spec.from_scratch and config is None:
        return DEFAULT_SHAPE["n_positions"]
    try:
        return int(json.loads(config.read_text()).get("n_positions", 1024))
    except (OSError, ValueError, TypeError):
        return None


def check_output(spec: TrainSpec) -> None:
    out = spec.output
    if out.exists() and not out.is_dir():
        raise TrainError(f"the output {out} exists and is not a directory")
    busy = out.is_dir() and any(out.iterdir())
    if spec.resume and not any((out / "checkpoints").glob("checkpoint-*")):
        raise TrainError(f"--resume: {out / 'checkpoints'} holds no checkpoint to resume from")
    if busy and not (spec.resume or spec.overwrite):
        raise TrainError(f"the output directory {out} exists and is not empty; pass --overwrite to replace "
                         f"it or --resume to continue its run")


def parse_duration(text: str) -> float:
    """'900', '900s', '15m', '1h30m' -> seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "": 1}
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)([hms]?))+", text.strip())
    if not parts:
        raise TrainError(f"--time-budget {text!r}: expected seconds or a duration such as 15m or 1h30m")
    total = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms]?)", text))
    if total <= 0:
        raise TrainError("--time-budget must be positive")
    return total
