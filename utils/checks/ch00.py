"""Checks for chapter 00 (orientation): the per-token loss, two hooks, a question.

The hook exercises grade the student's hook through the runner the notebook gives beside it
(``cache_activations(tokens, names)``, ``ablated_logits(tokens, head)``): the runner calls the
student's hook inside ``model.run_with_hooks`` on the bundled attn-only-1l, with a real HookPoint,
and returns plain data (a dict of tensors, logits), which is what the grader can send between
processes (a HookPoint cannot travel). The check compares that output with the same runner around
the reference hook (utils/models/hooks.py), and names a mistake by running the runner around each
catalogued wrong hook on the same tokens.
"""
from __future__ import annotations

from functools import lru_cache, partial

import torch

from utils.checks.core import (
    Cases,
    CheckFailure,
    Exercise,
    Misconception,
    describe_difference,
    outputs_match,
    question,
    run_check,
)
from utils.checks.toolkit import attn_only_1l, randint, rng, run_described
from utils.models import hooks
from utils.models.transformer import lm_cross_entropy

CHAPTER = "00"
EXERCISES = ("per_token_loss", "cache_hook", "zero_head_hook", "hook_question")


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


# =========================================================================== 2. a caching hook

# Hook points of attn-only-1l a caching case draws from (hook_result is off unless use_attn_result).
CACHEABLE = ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_q",
             "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_attn_scores",
             "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z", "blocks.0.hook_attn_out",
             "blocks.0.hook_resid_post")


def _random_tokens(g: torch.Generator) -> torch.Tensor:
    batch, pos = randint(g, 1, 3), randint(g, 6, 12)
    return torch.randint(0, attn_only_1l().cfg.d_vocab, (batch, pos), generator=g)


def cache_inputs(seed: int) -> dict:
    """Random tokens and one to three hook names, at least one inside block 0 (so a name cut to its
    last part differs from the full one)."""
    g = rng(seed)
    tokens = _random_tokens(g)
    order = torch.randperm(len(CACHEABLE), generator=g).tolist()
    names = [CACHEABLE[i] for i in order[:randint(g, 1, 3)]]
    if not any(name.startswith("blocks.") for name in names):
        names.append("blocks.0.attn.hook_z")
    return {"tokens": tokens, "names": names}


@lru_cache(maxsize=1)
def _real_text() -> torch.Tensor:
    from utils.data import analysis_tokens

    return analysis_tokens(seq_len=24, n_seqs=2)


def cache_entries(cache) -> tuple:
    """A cache dict as (its names, sorted; their tensors in that order): comparable and sendable.
    A tuple already in that form (a catalogued variant's output) is returned as it is."""
    if isinstance(cache, tuple):
        return cache
    if not isinstance(cache, dict):
        raise CheckFailure(f"cache_activations should return the cache dict; it returned a {type(cache).__name__} "
                           "(does it end with `return cache`?).")
    if not all(isinstance(k, str) for k in cache):
        kinds = sorted({type(k).__name__ for k in cache})
        raise CheckFailure(f"The cache's keys should be hook names (str), such as 'blocks.0.attn.hook_z'; yours "
                           f"are {', '.join(kinds)}: key by hook.name.")
    names = tuple(sorted(cache))
    return names, tuple(cache[n] for n in names)


def caching_run(model, tokens: torch.Tensor, names, hook_fn) -> dict:
    """What the notebook's ``cache_activations`` does: ``hook_fn`` (bound to a fresh cache) at every
    name, then at the same names an intervention that zeroes the activation in place."""
    cache: dict = {}
    fwd_hooks = [(name, partial(hook_fn, cache=cache)) for name in names]
    fwd_hooks += [(name, hooks.zero_in_place) for name in names]
    # No autograd: the in-place zeroing would otherwise fail on views of the weights wherever grad
    # is on (the notebook turns it off, the grader's process does not).
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    return cache


def _cached(hook_fn):
    return lambda tokens, names: cache_entries(caching_run(attn_only_1l(), tokens, names, hook_fn))


def _shared_memory(activation, hook, cache):
    cache[hook.name] = activation.detach()


def _short_name(activation, hook, cache):
    cache[hook.name.split(".")[-1]] = activation.detach().clone()


def _one_key(activation, hook, cache):
    cache["activation"] = activation.detach().clone()


def _first_sequence(activation, hook, cache):
    cache[hook.name] = activation[0].detach().clone()


CACHE = Exercise(
    chapter=CHAPTER,
    name="cache_hook",
    reference=lambda tokens, names: cache_entries(caching_run(attn_only_1l(), tokens, names, hooks.cache_hook)),
    make_inputs=cache_inputs,
    extra_inputs=(lambda: {"tokens": _real_text(),
                           "names": ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"]},),
    misconceptions=(
        Misconception("no clone", "Your cache holds zeros where the activations should be: the hook after yours "
                      "zeroed the activation in place, and your cache shared its memory. activation.detach() is "
                      "the same memory without the autograd graph; store activation.detach().clone().",
                      _cached(_shared_memory)),
        Misconception("short name", "Your cache is keyed by the last part of the hook's name ('hook_z'); key it "
                      "by the full name, hook.name ('blocks.0.attn.hook_z'), as run_with_cache does: two layers "
                      "have hooks with the same last part.",
                      _cached(_short_name)),
        Misconception("one key", "Every activation went under the same key, so each hook overwrote the previous "
                      "one; key each by its hook's name, cache[hook.name] = ...",
                      _cached(_one_key)),
        Misconception("first sequence", "You stored only the first sequence of the batch (activation[0]); store "
                      "the whole activation, batch axis included.",
                      _cached(_first_sequence)),
    ),
)


def _describe_cache(inputs: dict, got, expected):
    names, tensors = expected
    if not (isinstance(got, tuple) and len(got) == 2):
        return None
    if tuple(got[0]) != names:
        return (f"Your cache has the keys {list(got[0])}, but it should have exactly the hook names "
                f"{list(names)}.")
    for name, g, e in zip(names, got[1], tensors):
        if not outputs_match(g, e, CACHE.rtol, CACHE.atol):
            return f"cache[{name!r}] is wrong. {describe_difference(g, e, inputs, rtol=CACHE.rtol, atol=CACHE.atol)}"
    return None


def cache_hook(fn, cases: Cases = None) -> None:
    """Check your ``cache_hook`` through the notebook's runner: ``fn(tokens, names) -> cache`` runs the
    model with your hook at each name (then an in-place intervention there) and returns the cache."""
    run_described(CACHE, fn, cases, _describe_cache, call=lambda f, inputs: cache_entries(f(**inputs)))


# =========================================================================== 3. zero-ablating a head


def ablation_inputs(seed: int) -> dict:
    g = rng(seed)
    return {"tokens": _random_tokens(g), "head": randint(g, 0, attn_only_1l().cfg.n_heads - 1)}


def ablation_run(model, tokens: torch.Tensor, head: int, hook_fn) -> torch.Tensor:
    """What the notebook's ``ablated_logits`` does: the logits with ``hook_fn`` (bound to ``head``) at
    blocks.0.attn.hook_z."""
    return model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", partial(hook_fn, head=head))])


def _ablated(hook_fn):
    return lambda tokens, head: ablation_run(attn_only_1l(), tokens, head, hook_fn)


def _position_axis(z, hook, head):
    z = z.clone()
    z[:, head] = 0.0
    return z


def _d_head_axis(z, hook, head):
    z = z.clone()
    z[..., head] = 0.0
    return z


def _copy_not_returned(z, hook, head):
    z = z.clone()
    z[:, :, head] = 0.0


def _other_heads(z, hook, head):
    keep = torch.zeros_like(z)
    keep[:, :, head] = z[:, :, head]
    return keep


ABLATE_HEAD = Exercise(
    chapter=CHAPTER,
    name="zero_head_hook",
    reference=lambda tokens, head: ablation_run(attn_only_1l(), tokens, head, hooks.zero_head_hook),
    make_inputs=ablation_inputs,
    extra_inputs=(lambda: {"tokens": _real_text(), "head": 2},),
    rtol=1e-4,
    atol=1e-4,
    misconceptions=(
        Misconception("position axis", "You zeroed one POSITION (z[:, head]); hook_z is [batch, pos, head, d_head], "
                      "so a head is the third axis: z[:, :, head].",
                      _ablated(_position_axis)),
        Misconception("d_head axis", "You zeroed one coordinate of every head's d_head vector (z[..., head]); the "
                      "head is the third axis of [batch, pos, head, d_head]: z[:, :, head].",
                      _ablated(_d_head_axis)),
        Misconception("copy not returned", "The logits are those of the clean model: your hook edited a copy "
                      "(clone) and returned nothing, so the model carried on with the original z. Return the "
                      "edited tensor.",
                      _ablated(_copy_not_returned)),
        Misconception("other heads", "You kept the head and zeroed all the others; zero-ablating a head zeroes "
                      "only its own slice z[:, :, head].",
                      _ablated(_other_heads)),
    ),
)


def zero_head_hook(fn, cases: Cases = None) -> None:
    """Check your ``zero_head_hook`` through the notebook's runner: ``fn(tokens, head) -> logits`` runs
    the model with your hook at blocks.0.attn.hook_z."""
    run_check(ABLATE_HEAD, fn, cases)


hook_question = question(CHAPTER, "hook_question")
