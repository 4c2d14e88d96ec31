"""The course tokenizer: byte-level BPE trained on our corpus, used through transformers.

Byte-level means every string round-trips exactly (no unknown token). One special token,
``<|endoftext|>`` (id 0), separates documents and doubles as BOS and padding, as in GPT-2.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

from utils.paths import ASSETS

END_OF_TEXT = "<|endoftext|>"
VOCAB_SIZE = 4096
TOKENIZER_FILE = ASSETS / "tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE on ``texts``; returns a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@lru_cache(maxsize=1)
def load_tokenizer():
    """The bundled tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
    if not TOKENIZER_FILE.exists():
        raise FileNotFoundError(
            f"{TOKENIZER_FILE} is missing; reinstall the package or run `python -m utils.data.build`."
        )
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=None,
        clean_up_tokenization_spaces=False,
    )
