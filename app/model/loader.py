"""Finding the model: device and dtype, config, weights (or dummy ones), tokenizer files."""

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from app.model.gpt2 import GPT2, GPT2Config

log = logging.getLogger(__name__)

# The GPT-2 family's shapes (n_layer, n_embd, n_head), for dummy weights without a download.
KNOWN_SHAPES = {
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
    "distilgpt2": (6, 768, 12),
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_PATTERNS = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
PACKAGED_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "gpt2-tokenizer"


class ModelLoadError(RuntimeError):
    """The model cannot be found or read; the message says what to set instead."""


@dataclass
class LoadedModel:
    model: GPT2
    tokenizer_dir: Path
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


def load_model(model: str, load_format: str = "auto", device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load GPT2_MODEL (a hub id or a local directory), or dummy weights with its shapes."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dev.type == "cuda":
        # cuDNN's attention plans per shape, and a decode's key length grows every step: it
        # re-planned on every call (~20 ms of CPU each, measured on an H200). The other kernels
        # (memory-efficient, flash) take any shape as is.
        torch.backends.cuda.enable_cudnn_sdp(False)
    if load_format == "dummy":
        config, tokenizer_dir = dummy_config(model), PACKAGED_TOKENIZER
        local = Path(model)
        if (local / "vocab.json").is_file() and (local / "merges.txt").is_file():
            tokenizer_dir = local
        gpt2 = materialize(config, dev, dt)
        init_dummy(gpt2)
        log.warning("GPT2_LOAD_FORMAT=dummy: %s has RANDOM weights; its outputs are meaningless", model)
    else:
        path = model_dir(model)
        config = read_config(path)
        gpt2 = materialize(config, dev, dt)
        gpt2.load_state_dict(convert_hf_state_dict(read_weights(path)))
        has_tokenizer = (path / "vocab.json").is_file() or (path / "tokenizer.json").is_file()
        tokenizer_dir = path if has_tokenizer else PACKAGED_TOKENIZER
    if dev.type == "cpu" and not gpt2.pack_for_cpu():
        log.warning("oneDNN is not available: linear layers use the default BLAS (slower)")
    return LoadedModel(gpt2.eval(), tokenizer_dir, dev, dt)


def model_dir(model: str) -> Path:
    """A local directory as is; a hub id fetched into (or found in) the Hugging Face cache."""
    if os.path.isdir(model):
        return Path(model)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=HUB_PATTERNS))
    except Exception as exc:
        try:  # older repos ship only pytorch_model.bin
            return Path(snapshot_download(model, allow_patterns=[*HUB_PATTERNS[:1], "pytorch_model.bin",
                                                                 *HUB_PATTERNS[2:]]))
        except Exception:
            pass
        raise ModelLoadError(
            f"cannot load model {model!r} (GPT2_MODEL): it is not a local directory and fetching it from the "
            f"Hugging Face hub failed ({type(exc).__name__}: {exc}). Set GPT2_MODEL to a local Hugging Face "
            f"directory, make the hub reachable, or set GPT2_LOAD_FORMAT=dummy for random weights.") from exc


def read_config(path: Path) -> GPT2Config:
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}/config.json cannot be read ({exc}); GPT2_MODEL must name a GPT-2 "
                             f"checkpoint in Hugging Face format, or set GPT2_LOAD_FORMAT=dummy") from exc
    if raw.get("model_type", "gpt2") != "gpt2":
        raise ModelLoadError(f"{path} holds a {raw.get('model_type')!r} model; gpt2-serve serves GPT-2 models")
    return GPT2Config(vocab_size=raw["vocab_size"], n_positions=raw.get("n_positions", 1024),
                      n_embd=raw["n_embd"], n_layer=raw["n_layer"], n_head=raw["n_head"],
                      layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5))


def dummy_config(model: str) -> GPT2Config:
    """Shapes of a known GPT-2 name (any hub org prefix) or of a local directory's config.json."""
    if (Path(model) / "config.json").is_file():
        return read_config(Path(model))
    name = model.rstrip("/").split("/")[-1]
    if name not in KNOWN_SHAPES:
        raise ModelLoadError(f"GPT2_LOAD_FORMAT=dummy knows the shapes of {', '.join(KNOWN_SHAPES)}, or of a "
                             f"local directory with a config.json; GPT2_MODEL={model!r} is neither")
    n_layer, n_embd, n_head = KNOWN_SHAPES[name]
    return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        file = path / name
        if file.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(file)
            return torch.load(file, map_location="cpu", weights_only=True)
    raise ModelLoadError(f"{path} has no weights ({' or '.join(WEIGHT_FILES)}); set GPT2_MODEL to a complete "
                         f"checkpoint or GPT2_LOAD_FORMAT=dummy")


def convert_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' GPT2LMHeadModel names and Conv1D ([in, out]) weights -> ours ([out, in])."""
    renames = {".attn.c_attn.": ".c_attn.", ".attn.c_proj.": ".c_proj.", ".mlp.c_fc.": ".c_fc.",
               ".mlp.c_proj.": ".mlp_proj."}
    out = {}
    for key, tensor in state.items():
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old causal-mask buffers
        for old, new in renames.items():
            key = key.replace(old, new)
        if key.startswith("h.") and key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.t()
        out[key] = tensor
    out.setdefault("lm_head.weight", out["wte.weight"])  # checkpoints store the tied head once
    return out


def materialize(config: GPT2Config, device: torch.device, dtype: torch.dtype) -> GPT2:
    """An uninitialised model directly on the device, without building it twice."""
    with torch.device("meta"):
        model = GPT2(config)
    model = model.to(dtype).to_empty(device=device)
    model.lm_head.weight = model.wte.weight
    return model


@torch.no_grad()
def init_dummy(model: GPT2, std: float = 0.02, seed: int = 0) -> None:
    """GPT-2's own initialisation: N(0, std) weights, zero biases, unit layer norms."""
    gen = torch.Generator(device=model.wte.weight.device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, nn.Linear | nn.Embedding):
            module.weight.normal_(0.0, std, generator=gen)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
