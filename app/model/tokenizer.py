"""The GPT-2 byte-level BPE tokenizer, used at the edge only (the engine speaks token ids)."""

from pathlib import Path

from transformers import GPT2TokenizerFast


class Tokenizer:
    def __init__(self, directory: str | Path):
        # from_pretrained on a folder holding vocab.json + merges.txt; note that passing the two
        # files as vocab_file/merges_file builds an empty tokenizer in transformers 5
        self.hf = GPT2TokenizerFast.from_pretrained(str(directory))
        if len(self.hf) == 0:
            raise RuntimeError(f"the tokenizer in {directory} is empty")
        self.special_ids = frozenset(self.hf.all_special_ids)
        self._bytes_of = self._byte_table()  # built once here, not inside the first request

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, in one call of the Rust tokenizer (which releases the GIL)."""
        return [encoding.ids for encoding in self.hf.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, token_ids: list[int]) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (a token may hold part of a UTF-8 character)."""
        return self._bytes_of[token_id]

    def token_str(self, token_id: int) -> str:
        """A token's text, or `bytes:\\xe6\\x97` when it holds part of a UTF-8 character."""
        raw = self._bytes_of[token_id]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def _byte_table(self) -> list[bytes]:
        # GPT-2 maps every byte to a printable character; invert that map for each vocab entry
        byte_of = {ch: b for b, ch in _bytes_to_unicode().items()}
        special = set(self.hf.all_special_tokens)
        table = [b""] * len(self.hf)
        for token, token_id in self.hf.get_vocab().items():
            table[token_id] = token.encode() if token in special else bytes(byte_of[ch] for ch in token)
        return table

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def eos_token(self) -> str | None:
        return self.hf.eos_token

    @property
    def bos_token(self) -> str | None:
        return self.hf.bos_token


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (from OpenAI's encoder.py)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars
