"""Shared fixtures: a tiny random GPT-2 in Hugging Face format, with the real tokenizer.

Weights use init std 0.3 (not GPT-2's 0.02): near-flat logits make argmax flip on float noise,
peaked ones give diverse greedy paths that are stable to rounding."""

import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach the hub
os.environ["GPT2_TEST_FAULTS"] = "1"  # the engines the tests start accept injected faults (app/engine/faults.py)

import pytest
import torch
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

from app.model.loader import PACKAGED_TOKENIZER

TINY = dict(n_layer=2, n_embd=64, n_head=4, n_positions=512)


def make_hf_model(seed: int = 0, **shape) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = HFConfig(**{**TINY, **shape}, initializer_range=0.3, attn_implementation="eager")
    return GPT2LMHeadModel(config).eval()


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need an NVIDIA GPU: skipped, with the reason, where torch sees none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False here); run `pytest -m cuda` "
                            "on a GPU host, e.g. scripts/gpu-check.sh")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A directory with config.json, model.safetensors, vocab.json and merges.txt."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    make_hf_model().save_pretrained(path)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(PACKAGED_TOKENIZER / name, path / name)
    return str(path)


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir) -> GPT2LMHeadModel:
    """transformers' own model on the tiny checkpoint: the reference."""
    return GPT2LMHeadModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
