"""The model a run starts from: a pretrained GPT-2 (--from, fine-tuning) or a new one (from scratch)."""

from pathlib import Path

from app.model.loader import PACKAGED_TOKENIZER
from app.train.spec import DEFAULT_SHAPE, TrainError, TrainSpec

SIZE_FLAGS = {"n_layer": "--n-layer", "n_embd": "--n-embd", "n_head": "--n-head", "n_positions": "--context"}


def tokenizer_dir(spec: TrainSpec) -> str:
    """Where the tokenizer comes from: the starting checkpoint's own files, else GPT-2's (packaged)."""
    start = Path(spec.start) if spec.start else None
    if start and start.is_dir():
        if (start / "tokenizer.json").is_file() or (start / "vocab.json").is_file():
            return str(start)
        return str(PACKAGED_TOKENIZER)
    return spec.start or str(PACKAGED_TOKENIZER)  # a hub id: its own tokenizer


def load_tokenizer(spec: TrainSpec):
    from transformers import GPT2TokenizerFast

    source = tokenizer_dir(spec)
    try:
        tokenizer = GPT2TokenizerFast.from_pretrained(source)
    except OSError as exc:
        raise TrainError(f"cannot load the tokenizer of {source!r}: {str(exc).splitlines()[0]}") from exc
    # documents are longer than any context; packing cuts them, so no length warning is wanted
    tokenizer.model_max_length = int(1e30)
    return tokenizer


def model_config(spec: TrainSpec, vocab_size: int):
    """The starting model's GPT2Config (read, not the weights), with the run's overrides."""
    from transformers import GPT2Config

    if spec.start:
        try:
            config = GPT2Config.from_pretrained(spec.start)
        except (OSError, ValueError) as exc:
            raise TrainError(f"cannot load {spec.start!r}: it is not a local directory with a config.json and "
                             f"the Hugging Face hub did not provide it ({str(exc).splitlines()[0]})") from exc
        if config.model_type != "gpt2":
            raise TrainError(f"{spec.start} is a {config.model_type!r} model; gpt2-serve trains GPT-2 models")
    else:
        config = GPT2Config.from_json_file(str(spec.config)) if spec.config else GPT2Config(**DEFAULT_SHAPE)
        sizes = {"n_layer": spec.n_layer, "n_embd": spec.n_embd, "n_head": spec.n_head, "n_positions": spec.context}
        for name, value in sizes.items():
            if value is not None:
                if value < 1:
                    raise TrainError(f"{SIZE_FLAGS[name]} must be positive, not {value}")
                setattr(config, name, value)
        if config.n_embd % config.n_head:
            raise TrainError(f"--n-embd ({config.n_embd}) must be a multiple of --n-head ({config.n_head})")
        config.vocab_size = vocab_size
        if spec.dropout is None:
            spec.dropout = 0.0  # short runs on fresh models learn faster without it (nanoGPT's choice)
    if spec.dropout is not None:
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = spec.dropout
    if vocab_size > config.vocab_size:
        raise TrainError(f"the tokenizer has {vocab_size} tokens but the model only {config.vocab_size}")
    return config


def block_size(spec: TrainSpec, config) -> int:
    size = spec.block_size or config.n_positions
    if size > config.n_positions:
        raise TrainError(f"--block-size {size} is above the model's context of {config.n_positions} tokens "
                         f"(n_positions)")
    if size < 2:
        raise TrainError(f"--block-size must be at least 2, not {size}")
    return size


def build_model(spec: TrainSpec, config):
    from transformers import GPT2LMHeadModel

    lm = GPT2LMHeadModel.from_pretrained(spec.start, config=config) if spec.start else GPT2LMHeadModel(config)
    # transformers derives the loss type from the class name, and "GPT2LMHeadModel" matches none, so
    # the Trainer would count every label as a target (T per block, not the T - 1 the shifted loss
    # has) and report, and train on, losses (T - 1) / T too small. Say what the loss is.
    lm.loss_type = "ForCausalLM"
    return lm
