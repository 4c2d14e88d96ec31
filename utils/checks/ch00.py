"""Checks for chapter 00 (orientation)."""
from __future__ import annotations

from functools import lru_cache

import torch

from utils.checks.core import Cases, Exercise, Misconception, question, run_check
from utils.models.transformer import lm_cross_entropy

CHAPTER = "00"
EXERCISES = ("per_token_loss", "hook_question")


def _random_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch, pos, vocab = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((2, 5), (5, 10), (11, 31)))
    logits = torch.randn(batch, pos, vocab, generator=g) * 2
    tokens = torch.randint(0, vocab, (batch, pos), generator=g)
    return {"logits": logits, "tokens": tokens}


@lru_cache(maxsize=1)
def _real_model_inputs() -> dict:
    """The bundled 1-layer model's logits on held-out text."""
    from utils.data import analysis_tokens
    from utils.models import load_model

    model = load_model("attn-only-1l", device="cpu")
    tokens = analysis_tokens(seq_len=32, n_seqs=4)
    with torch.no_grad():
        logits = model(tokens)
    return {"logits": logits, "tokens": tokens}


def _reference(logits, tokens):
    return lm_cross_entropy(logits, tokens, per_token=True)


PER_TOKEN_LOSS = Exercise(
    chapter=CHAPTER,
    name="per_token_loss",
    reference=_reference,
    make_inputs=_random_inputs,
    extra_inputs=(lambda: dict(_real_model_inputs()),),
    misconceptions=(
        Misconception("no shift", "Position i's logits are a prediction of token i+1, so compare logits[:, :-1] "
                      "with tokens[:, 1:]; you compared each position with its own token.",
                      lambda logits, tokens: -logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]),
        Misconception("shift the wrong way", "You shifted in the wrong direction: logits[:, :-1] (all but the "
                      "last position) predict tokens[:, 1:] (all but the first token).",
                      lambda logits, tokens: -logits[:, 1:].log_softmax(-1).gather(-1, tokens[:, :-1, None])[..., 0]),
        Misconception("probabilities", "The loss is the negative LOG probability; you used the probability "
                      "itself (softmax instead of log_softmax).",
                      lambda logits, tokens: -logits[:, :-1].softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]),
        Misconception("sign", "You returned log p, which is negative; the loss is -log p (a positive number).",
                      lambda logits, tokens: logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]),
        Misconception("raw logits", "You used the raw logit of the correct token; normalise first with "
                      "log_softmax over the vocabulary.",
                      lambda logits, tokens: -logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]),
        Misconception("softmax over positions", "Your softmax ran over the position axis; a distribution over "
                      "next tokens is normalised over the vocabulary (the last axis).",
                      lambda logits, tokens: -logits[:, :-1].log_softmax(1).gather(-1, tokens[:, 1:, None])[..., 0]),
        Misconception("averaged", "Return one loss per (sequence, position), shape [batch, pos - 1], "
                      "not the mean.",
                      lambda logits, tokens: lm_cross_entropy(logits, tokens)),
    ),
)


def per_token_loss(fn, cases: Cases = None) -> None:
    """Check ``fn(logits, tokens) -> loss[batch, pos - 1]``."""
    run_check(PER_TOKEN_LOSS, fn, cases)


hook_question = question(CHAPTER, "hook_question")
