"""Prompt -> (tokens, token_mask) as openpi's PaligemmaTokenizer builds them for pi05.

Two prompt formats, chosen by the model config (`state_in_prompt`):
- state in the prompt (pi05_droid, pi05_base): "Task: {text}, State: {bins};\nAction: " encoded in one piece after <bos>,
  the normalized state discretized into 256 bins over [-1, 1];
- no state (pi05_libero): <bos> + encode(text) + encode("\n"), the newline encoded on its own.
{text} is the prompt stripped, with "_" and newlines turned into spaces. Tokens are padded with 0 to max_token_len; the
mask marks the real ones. A prompt longer than max_token_len is an error (openpi truncates it with a warning).

Two vocabularies: PaliGemma's sentencepiece file (real checkpoints), or a byte-level stand-in for synthetic weights,
which have no vocabulary (token = byte_offset + UTF-8 byte). The stand-in encodes the same text, so prompt lengths,
state bins and validation are exercised exactly as with the real file; its ids mean nothing to a real model.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import TriforceError


@cache
def tokenizer_spec() -> dict:
    return tomllib.loads(resources.files("triforce.data").joinpath("io_specs.toml").read_text())["tokenizer"]


def clean_prompt(prompt: str) -> str:
    return prompt.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalized state -> bin index per dimension (openpi: values below -1 give -1, above 1 give 255)."""
    bins = tokenizer_spec()["state_bins"]
    return np.digitize(np.asarray(state, np.float64), bins=np.linspace(-1, 1, bins + 1)[:-1]) - 1


def prompt_pieces(prompt: str, state: np.ndarray | None) -> list[str]:
    """The texts encoded one after another (after <bos>); state=None is the no-state format."""
    text = clean_prompt(prompt)
    if state is None:
        return [text, "\n"]
    bins = " ".join(str(int(b)) for b in discretize_state(state))
    return [f"Task: {text}, State: {bins};\nAction: "]


class PromptTokenizer:
    """Shared prompt building and padding; subclasses only encode one piece of text."""

    kind = ""
    bos_id = 0

    def __init__(self, max_len: int, vocab_size: int):
        self.max_len = max_len
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids = [self.bos_id]
        for piece in prompt_pieces(prompt, state):
            ids += self.encode(piece)
        if len(ids) > self.max_len:
            raise TriforceError(f"prompt is {len(ids)} tokens ({self.kind}), more than max_token_len={self.max_len}: "
                                f"shorten it")
        tokens = np.zeros(self.max_len, np.int32)
        mask = np.zeros(self.max_len, np.bool_)
        tokens[: len(ids)] = ids
        mask[: len(ids)] = True
        return tokens, mask


class SentencePieceTokenizer(PromptTokenizer):
    """PaliGemma's sentencepiece model file (openpi downloads it as big_vision/paligemma_tokenizer.model)."""

    kind = "sentencepiece"

    def __init__(self, path: Path, max_len: int, vocab_size: int):
        super().__init__(max_len, vocab_size)
        import sentencepiece

        path = Path(path).expanduser()
        if not path.is_file():
            raise TriforceError(f"tokenizer file {path} does not exist: pass PaliGemma's paligemma_tokenizer.model")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as err:
            raise TriforceError(f"{path} is not a sentencepiece model ({str(err).splitlines()[0]}): pass "
                                f"PaliGemma's paligemma_tokenizer.model") from None
        if self._sp.vocab_size() > vocab_size:
            raise TriforceError(f"tokenizer {path} has {self._sp.vocab_size()} pieces but the model embeds only "
                                f"{vocab_size}: it is not this model's vocabulary")
        self.path = path
        self.bos_id = self._sp.bos_id()  # add_bos=True in openpi: the file's own <bos> (2 in PaliGemma's)
        if self.bos_id < 0:
            raise TriforceError(f"tokenizer {path} has no <bos> piece: it is not PaliGemma's tokenizer")

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))


class ByteTokenizer(PromptTokenizer):
    """Stand-in for synthetic weights: <bos>, then byte_offset + each UTF-8 byte."""

    kind = "byte-standin"

    def __init__(self, max_len: int, vocab_size: int):
        super().__init__(max_len, vocab_size)
        self.offset = tokenizer_spec()["byte_offset"]
        self.bos_id = tokenizer_spec()["bos_id"]
        if self.offset + 256 > vocab_size:
            raise TriforceError(f"the byte-level stand-in needs a vocabulary of at least {self.offset + 256} ids, the "
                                f"model has {vocab_size}: pass a sentencepiece tokenizer file")

    def encode(self, text: str) -> list[int]:
        return [self.offset + b for b in text.encode("utf-8")]


def load_tokenizer(path: str | Path | None, *, max_len: int, vocab_size: int, synthetic: bool) -> PromptTokenizer | None:
    """The tokenizer a server uses: the file when given; the byte stand-in for synthetic weights; else None (a real
    checkpoint without a tokenizer file accepts only pre-tokenized prompts)."""
    if path:
        return SentencePieceTokenizer(Path(path), max_len, vocab_size)
    if synthetic:
        return ByteTokenizer(max_len, vocab_size)
    return None
