def test_openai_client_completes(live):
    out = live.client().completions.create(model="tiny-gpt2", prompt="Hello", max_tokens=5, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens >= 1
