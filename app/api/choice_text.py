"""Token ids -> the text of one choice, released safely piece by piece.

Byte-level BPE tokens can hold part of a UTF-8 character, and a stop string can span tokens.
So text is released only when it is whole characters and cannot be the start of a stop string;
a stop string found anywhere ends the choice there, the stop text itself left out.
"""

import codecs
from dataclasses import dataclass

from app.engine.protocol import PromptScores, TokenLogprob
from app.model.tokenizer import Tokenizer


@dataclass
class TokenEntry:
    """One token for `logprobs`: its text, logprob, alternatives and offset in the choice text."""

    token: str
    logprob: float | None
    top: dict[str, float] | None
    offset: int


class ChoiceText:
    """The text of one choice: an optional echoed prompt, then the generated tokens. Stop strings
    are looked for in the generated text only."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str], prefix: str = "", with_entries: bool = True):
        self.tokenizer = tokenizer
        self.stop = stop
        self.with_entries = with_entries  # keep a TokenEntry per token (for `logprobs`)
        self.text = prefix  # everything decoded so far (cut at a stop string once found)
        self.released = 0  # characters of `text` handed out already
        self.stopped = False  # a stop string was found
        self._generated_from = len(prefix)  # where the generated text begins in `text`
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._entries: list[TokenEntry] = []
        self._entries_released = 0

    def add_prompt(self, token_ids: list[int], scores: PromptScores | None) -> None:
        """Echo: the prompt tokens, with their scores when asked (the first has none)."""
        for i, token_id in enumerate(token_ids):
            if scores is None or i == 0:
                self._add(token_id, None, None)
            else:
                self._add(token_id, scores.token_logprobs[i - 1], self._top(scores.top[i - 1], token_id,
                                                                           scores.token_logprobs[i - 1]))
        self.text += self._decoder.decode(b"", final=True)  # the prompt ends on a whole character
        self._generated_from = len(self.text)

    def add(self, token_id: int, logprob: TokenLogprob | None) -> None:
        """A generated token (ignored once a stop string has ended the choice)."""
        if self.stopped:
            return
        if logprob is None:
            self._add(token_id, None, None)
        else:
            self._add(token_id, logprob.logprob, self._top(logprob.top, token_id, logprob.logprob))
        if self.stop:
            self._find_stop()

    def _top(self, alternatives: list[tuple[int, float]], token_id: int, logprob: float) -> dict[str, float]:
        """The alternatives by token text, plus the token itself, as OpenAI lists them."""
        top = {self.tokenizer.token_str(t): lp for t, lp in alternatives}
        top.setdefault(self.tokenizer.token_str(token_id), logprob)
        return top

    def _add(self, token_id: int, logprob: float | None, top: dict | None) -> None:
        if self.with_entries:
            self._entries.append(TokenEntry(self.tokenizer.token_str(token_id), logprob, top, len(self.text)))
        if token_id not in self.tokenizer.special_ids:  # <|endoftext|> ends text, it is not part of it
            self.text += self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def _find_stop(self) -> None:
        start = max(self.released, self._generated_from)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def take(self, final: bool = False) -> tuple[str, list[TokenEntry]]:
        """Text and token entries that are safe to hand out now; everything left when `final`."""
        if final and not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        end = len(self.text) if final or self.stopped or not self.stop else len(self.text) - self._held_back()
        piece = self.text[self.released : end]
        self.released = max(self.released, end)
        if not self.with_entries:
            return piece, []
        first = count = self._entries_released
        if final and not self.stopped:
            count = len(self._entries)
        else:  # offsets never decrease; tokens starting after a stop string's cut are not part of the choice
            while count < len(self._entries) and self._entries[count].offset < end:
                count += 1
        self._entries_released = count
        return piece, self._entries[first:count]

    @property
    def released_entries(self) -> list[TokenEntry]:
        return self._entries[: self._entries_released]

    def _held_back(self) -> int:
        """Length of the longest tail of the unreleased text that could begin a stop string."""
        pending = self.text[max(self.released, self._generated_from) :]
        for k in range(min(len(pending), max((len(s) - 1 for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(pending[-k:]) for s in self.stop):
                return k
        return 0
