"""Model loading: shapes for dummy weights, clear failures, device and dtype choice."""

import pytest
import torch

from app.model.loader import (
    KNOWN_SHAPES,
    ModelLoadError,
    convert_hf_state_dict,
    dummy_config,
    load_model,
    resolve_dtype,
)


@pytest.mark.parametrize("name,params", [("gpt2", 124.4e6), ("gpt2-medium", 354.8e6), ("gpt2-large", 774.0e6),
                                         ("openai-community/gpt2-xl", 1557.6e6), ("distilgpt2", 81.9e6)])
def test_dummy_shapes_match_the_published_parameter_counts(name, params):
    config = dummy_config(name)
    assert config.num_parameters == pytest.approx(params, rel=0.002)
    assert name.split("/")[-1] in KNOWN_SHAPES


def test_dummy_weights_from_a_config_json(tiny_model_dir):
    loaded = load_model(tiny_model_dir, load_format="dummy", device="cpu")
    assert loaded.model.config.n_embd == 64 and loaded.model.lm_head.weight is loaded.model.wte.weight


def test_a_missing_model_fails_at_once_naming_the_settings(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_model("no-such-org/no-such-model")
    assert "GPT2_MODEL" in str(err.value) and "GPT2_LOAD_FORMAT=dummy" in str(err.value)
    with pytest.raises(ModelLoadError, match="GPT2_LOAD_FORMAT=dummy knows"):
        load_model("not-a-gpt2", load_format="dummy")


def test_a_directory_without_weights_says_so(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((__import__("pathlib").Path(tiny_model_dir) / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(str(tmp_path))


def test_hf_names_and_conv1d_weights_are_converted(hf_model):
    state = convert_hf_state_dict(hf_model.state_dict())
    assert torch.equal(state["h.0.c_attn.weight"], hf_model.transformer.h[0].attn.c_attn.weight.t())
    assert "h.1.mlp_proj.bias" in state and "lm_head.weight" in state


def test_dtype_auto_is_fp32_on_cpu_and_overridable():
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
