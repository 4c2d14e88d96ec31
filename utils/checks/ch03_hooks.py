"""Checks for chapter 03's hooks: zero- and mean-ablation hooks and an activation-patching hook on
``blocks.L.attn.hook_z``, and the in-context-learning score of held-out text with heads ablated.

The hook checks run the student's hook INSIDE a real forward pass of the bundled attn-only-2l
(``run_with_hooks`` on seeded repeated random tokens) and compare the model's logits with those of
the same pass run with the reference hook. The hook is called as a forward pass calls it,
``hook_fn(z, hook=None, **bound_arguments)``: ``z`` is the live activation, and ``hook`` is None
because these hooks need nothing from the HookPoint (and a HookPoint cannot be sent to the
grader's process). The forward pass goes on with what the hook RETURNS; a hook that returns None
(an edit in place) or a tensor of another shape is refused with a message saying so.

``ablated_icl_score`` is the student's function of (tokens, heads, mean) that runs the notebook's
``model2`` with their hooks; it is compared with the reference on rows of held-out text.

A mismatch is explained by the first catalogued mistake whose logits (or score) the student's
reproduce.
"""
from __future__ import annotations

import functools
from functools import lru_cache

import torch

from utils.checks.ch03_induction import attn_only_2l
from utils.checks.core import Cases, CheckFailure, Exercise, default_case, run_check
from utils.checks.toolkit import misconception, randint, rng
from utils.induction import hooks as ref
from utils.induction.copying import per_token_loss
from utils.induction.experiments import corrupted_first_copy
from utils.models.evaluation import in_context_learning_score, repeated_random_tokens

CHAPTER = "03"
EXERCISES = ["zero_ablation_hook", "mean_ablation_hook", "patch_head_position_hook", "ablated_icl_score"]
N_HEADS = 8  # attn-only-2l's heads per layer
ICL_ROWS = 8  # rows of held-out text per ablated_icl_score case


# --------------------------------------------------------------------------- running a hook in a forward pass


def _hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@torch.no_grad()
def _logits_with(hook_fn, tokens: torch.Tensor, layer: int, **bound) -> torch.Tensor:
    """attn-only-2l's logits on ``tokens`` with ``hook_fn(z, hook=None, **bound)`` on layer's hook_z."""
    return attn_only_2l().run_with_hooks(
        tokens, fwd_hooks=[(_hook_name(layer), lambda z, hook: hook_fn(z, hook=None, **bound))])


def in_forward_pass(fn, exercise: str):
    """The student's hook, run inside the model's forward pass: (tokens, layer, **bound) -> logits.
    Refuses a hook that returns None or a tensor of the wrong shape, with a clear message."""
    if not callable(fn):
        return fn

    def checked(z, hook, **bound):
        out = fn(z, hook=hook, **bound)
        if out is None:
            raise CheckFailure(
                f"{exercise} returned None. A hook that edits z in place and returns nothing changes the "
                f"activation behind the caller's back (a cached copy of z, the tensor autograd saved for the "
                f"backward pass), and here the forward pass continues with what your hook RETURNS: build a new "
                f"tensor (z.clone(), then edit the clone) and return it.")
        if not isinstance(out, torch.Tensor):
            raise CheckFailure(f"{exercise} returned a {type(out).__name__}; a hook on hook_z returns a tensor "
                               f"shaped like z, {list(z.shape)}.")
        if out.shape != z.shape:
            raise CheckFailure(f"{exercise} returned shape {list(out.shape)}; a hook on hook_z must return a tensor "
                               f"shaped like z, [batch, pos, head, d_head] = {list(z.shape)}, or the next layer "
                               f"cannot read it.")
        return out

    def run(tokens, layer, **bound):
        return _logits_with(checked, tokens, layer, **bound)

    return run


def _reference_run(hook_fn):
    """A (tokens, layer, **bound) -> logits runner for a reference or a catalogued wrong hook; the
    hook itself (what a student would submit) is its ``hook`` attribute."""
    def run(tokens, layer, **bound):
        return _logits_with(hook_fn, tokens, layer, **bound)

    run.hook = hook_fn
    return run


# --------------------------------------------------------------------------- zero- and mean-ablation hooks


def _ablation_inputs(exercise: str):
    """make_inputs for an ablation hook: repeated random tokens (so the induction heads matter), a
    layer and 2-3 of its heads. The first default case ablates two induction heads of layer 1."""
    return functools.partial(_ablation_case, exercise)


def _ablation_case(exercise: str, seed: int) -> dict:
    g = rng(seed)
    case = default_case(exercise, seed)
    batch, n = randint(g, 2, 3), randint(g, 6, 12)
    tokens = repeated_random_tokens(attn_only_2l(), n, batch, seed=randint(g, 0, 10 ** 6))
    if case == 0:
        layer, heads = 1, [3, 5]
    else:
        layer = randint(g, 0, 1)
        heads = torch.randperm(N_HEADS, generator=g)[:randint(g, 2, 3)].sort().values.tolist()
    return dict(tokens=tokens, layer=layer, heads=heads)


def _ablation_variant(*, axis=2, complement=False, mean=None, unchanged=False):
    """An ablation hook with one thing changed. axis: the axis indexed by ``heads`` (2 is right);
    mean: None to zero, else the axes the mean runs over ((0, 1) is right; "all": one number)."""
    def hook_fn(z, hook, heads):
        out = z.clone()
        idx = [h for h in range(z.shape[axis]) if h not in heads] if complement else list(heads)
        sel = (slice(None),) * axis + (idx,)
        if mean is None:
            out[sel] = 0.0
        elif mean == "all":
            out[sel] = z[sel].mean()
        else:
            out[sel] = z[sel].mean(dim=mean, keepdim=True).expand_as(out[sel])
        return z.clone() if unchanged else out

    return _reference_run(hook_fn)


_RETURNED_INPUT = ("Your hook returned z unchanged: you built the ablated tensor but returned the input (or "
                   "edited a copy you then dropped). The forward pass continues with what the hook returns: return "
                   "the edited clone.")
_POSITIONS = ("You indexed the wrong axis: z[:, heads] picks POSITIONS. hook_z is [batch, pos, head, d_head], so "
              "a head is z[:, :, h].")
_D_HEAD = ("You indexed the last axis: z[..., heads] picks components of d_head in every head. hook_z is "
           "[batch, pos, head, d_head], so a head is z[:, :, h].")

ZERO_ABLATION_HOOK = Exercise(
    chapter=CHAPTER,
    name="zero_ablation_hook",
    reference=_reference_run(ref.zero_ablation_hook),
    make_inputs=_ablation_inputs("zero_ablation_hook"),
    rtol=1e-4, atol=1e-4,
    misconceptions=(
        misconception("positions zeroed", _POSITIONS, _ablation_variant(axis=1)),
        misconception("d_head components zeroed", _D_HEAD, _ablation_variant(axis=3)),
        misconception("every other head zeroed", "You zeroed every head EXCEPT the listed ones; zero exactly the "
                      "heads in `heads` and leave the others alone.", _ablation_variant(complement=True)),
        misconception("input returned", _RETURNED_INPUT, _ablation_variant(unchanged=True)),
    ),
)

MEAN_ABLATION_HOOK = Exercise(
    chapter=CHAPTER,
    name="mean_ablation_hook",
    reference=_reference_run(ref.mean_ablation_hook),
    make_inputs=_ablation_inputs("mean_ablation_hook"),
    rtol=1e-4, atol=1e-4,
    misconceptions=(
        misconception("zeroed instead of mean-ablated", "You zeroed the heads. Mean-ablation replaces each listed "
                      "head's z by its mean over the batch and the positions, so the head keeps adding its average "
                      "output and only the information it moves is removed.", _ablation_variant()),
        misconception("positions mean-ablated", _POSITIONS, _ablation_variant(axis=1, mean=(0, 2))),
        misconception("mean over the heads too", "Your mean also runs over the heads, mixing them. Each ablated head "
                      "gets ITS OWN mean over the batch and positions: z[:, :, heads].mean(dim=(0, 1), keepdim=True).",
                      _ablation_variant(mean=(0, 1, 2))),
        misconception("mean over d_head", "Your mean runs over d_head: one number per sequence, position and head, "
                      "which keeps the information the head moves. Average over the batch and the positions "
                      "(dims 0 and 1), keeping d_head: one [d_head] vector per head.", _ablation_variant(mean=(3,))),
        misconception("mean over the batch only", "Your mean is over the batch only (one mean per position). Average "
                      "over the batch AND the positions: z[:, :, heads].mean(dim=(0, 1), keepdim=True).",
                      _ablation_variant(mean=(0,))),
        misconception("mean over the positions only", "Your mean is over the positions only (one mean per sequence). "
                      "Average over the batch AND the positions: z[:, :, heads].mean(dim=(0, 1), keepdim=True).",
                      _ablation_variant(mean=(1,))),
        misconception("one number for everything", "You replaced the heads by one number, the mean of all their "
                      "entries. Each ablated head gets its own mean VECTOR (d_head numbers) over the batch and "
                      "positions.", _ablation_variant(mean="all")),
        misconception("input returned", _RETURNED_INPUT, _ablation_variant(mean=(0, 1), unchanged=True)),
    ),
)


def zero_ablation_hook(fn, cases: Cases = None) -> None:
    """Check ``fn(z[batch, pos, head, d_head], hook, heads: list[int]) -> z`` inside attn-only-2l's
    forward pass on repeated random tokens (hook_z of layer 0 or 1; the logits are compared)."""
    run_check(ZERO_ABLATION_HOOK, in_forward_pass(fn, "zero_ablation_hook"), cases)


def mean_ablation_hook(fn, cases: Cases = None) -> None:
    """Check ``fn(z[batch, pos, head, d_head], hook, heads: list[int]) -> z`` (each listed head set to
    its mean over batch and positions) inside attn-only-2l's forward pass; the logits are compared."""
    run_check(MEAN_ABLATION_HOOK, in_forward_pass(fn, "mean_ablation_hook"), cases)


# --------------------------------------------------------------------------- the patching hook


@lru_cache(maxsize=16)
def _clean_z(tokens_key: tuple, layer: int) -> torch.Tensor:
    tokens = torch.tensor(tokens_key)
    with torch.no_grad():
        _, cache = attn_only_2l().run_with_cache(tokens, names_filter=lambda n: n == _hook_name(layer))
    return cache[_hook_name(layer)]


def _patch_inputs(seed: int) -> dict:
    """Corrupted tokens (BOS, s, r) as the run, the clean run's hook_z (BOS, r, r), one head and one
    second-copy position. The default cases pick a position below the number of heads and a head
    below the number of positions, so swapping the two axes still runs and is named."""
    g = rng(seed)
    case = default_case("patch_head_position_hook", seed)
    batch = randint(g, 2, 3)
    n = 4 if case is not None else randint(g, 4, 10)
    model = attn_only_2l()
    clean = repeated_random_tokens(model, n, batch, seed=randint(g, 0, 10 ** 6))
    corrupted = corrupted_first_copy(clean, n, model.cfg.d_vocab, seed=randint(g, 0, 10 ** 6))
    layer = 1 if case == 0 else randint(g, 0, 1)
    head = 5 if case == 0 else randint(g, 0, N_HEADS - 1)
    pos = randint(g, n + 1, 2 * n)
    if case is not None:
        pos = min(pos, N_HEADS - 1)
    return dict(tokens=corrupted, layer=layer, clean_z=_clean_z(tuple(map(tuple, clean.tolist())), layer).clone(),
                head=head, pos=pos)


def _patch_variant(*, sel=lambda pos, head: (slice(None), pos, head), reverse=False, unchanged=False):
    def hook_fn(z, hook, clean_z, head, pos):
        target, source = (clean_z.clone(), z) if reverse else (z.clone(), clean_z)
        index = sel(pos, head)
        target[index] = source[index]
        return z.clone() if unchanged else target

    return _reference_run(hook_fn)


PATCH_HEAD_POSITION_HOOK = Exercise(
    chapter=CHAPTER,
    name="patch_head_position_hook",
    reference=_reference_run(ref.patch_head_position_hook),
    make_inputs=_patch_inputs,
    rtol=1e-4, atol=1e-4,
    misconceptions=(
        misconception("every position patched", "You patched the head at EVERY position (z[:, :, head] = "
                      "clean_z[:, :, head]). Patch one position only: z[:, pos, head] = clean_z[:, pos, head].",
                      _patch_variant(sel=lambda pos, head: (slice(None), slice(None), head))),
        misconception("every head at the position patched", "You patched every head at that position (z[:, pos] = "
                      "clean_z[:, pos]). Patch one head: z[:, pos, head] = clean_z[:, pos, head].",
                      _patch_variant(sel=lambda pos, head: (slice(None), pos))),
        misconception("position and head swapped", "You swapped the position and head axes: z[:, head, pos]. hook_z "
                      "is [batch, pos, head, d_head]: z[:, pos, head].",
                      _patch_variant(sel=lambda pos, head: (slice(None), head, pos))),
        misconception("head indexed on d_head", "You indexed the head on the last axis (z[:, pos, :, head], one "
                      "component of d_head in every head). hook_z is [batch, pos, head, d_head]: z[:, pos, head].",
                      _patch_variant(sel=lambda pos, head: (slice(None), pos, slice(None), head))),
        misconception("wrong direction", "You patched the wrong way round: you returned the CLEAN z with the "
                      "corrupted run's slice pasted in. The hook runs on the corrupted run: return its z with the one "
                      "slice taken from clean_z.", _patch_variant(reverse=True)),
        misconception("clean z returned", "You returned clean_z itself: every head at every position taken from the "
                      "clean run. Start from the corrupted run's z (a clone) and copy one slice.",
                      _patch_variant(sel=lambda pos, head: (slice(None),))),
        misconception("input returned", _RETURNED_INPUT.replace("ablated", "patched"), _patch_variant(unchanged=True)),
    ),
)


def patch_head_position_hook(fn, cases: Cases = None) -> None:
    """Check ``fn(z, hook, clean_z, head: int, pos: int) -> z`` inside attn-only-2l's forward pass on
    corrupted repeated tokens (BOS, s, r), patching from the clean run (BOS, r, r); logits compared."""
    run_check(PATCH_HEAD_POSITION_HOOK, in_forward_pass(fn, "patch_head_position_hook"), cases)


# --------------------------------------------------------------------------- the ICL score with heads ablated


@lru_cache(maxsize=1)
def _text_rows() -> torch.Tensor:
    from utils.data.dataset import analysis_tokens

    return analysis_tokens(seq_len=128)


_ICL_HEADS = {0: ([(0, 5), (1, 5), (1, 6)], True), 1: ([(1, 1), (1, 3)], True), 2: ([(0, 2), (0, 6), (1, 3)], False)}


def _icl_inputs(seed: int) -> dict:
    """``ICL_ROWS`` rows of held-out text (128 tokens), a few (layer, head) pairs and the mean flag.
    The first case mixes the layers and mean-ablates; the third zero-ablates."""
    g = rng(seed)
    rows = _text_rows()
    tokens = rows[torch.randperm(len(rows), generator=g)[:ICL_ROWS]]
    case = default_case("ablated_icl_score", seed)
    if case in _ICL_HEADS:
        heads, mean = _ICL_HEADS[case]
    else:
        picked = torch.randperm(2 * N_HEADS, generator=g)[:randint(g, 1, 4)].sort().values.tolist()
        heads, mean = [(i // N_HEADS, i % N_HEADS) for i in picked], bool(randint(g, 0, 1))
    return dict(tokens=tokens, heads=heads, mean=mean)


def _icl_variant(*, swap=False, layer_as=None, whole_layers=False, none=False, sign=1.0):
    """ablated_icl_score with one thing changed: swap exchanges zero and mean; layer_as puts every head in
    one layer; whole_layers ablates every head of the layers named; none ablates nothing."""
    @torch.no_grad()
    def ablated_icl_score(tokens, heads, mean=True):
        model = attn_only_2l()
        pairs = [(layer if layer_as is None else layer_as, h) for layer, h in heads]
        if whole_layers:
            pairs = [(layer, h) for layer in sorted({lay for lay, _ in pairs}) for h in range(N_HEADS)]
        hook = ref.mean_ablation_hook if mean != swap else ref.zero_ablation_hook
        by_layer = {} if none else ref.heads_by_layer(pairs, model.cfg.n_layers, model.cfg.n_heads)
        logits = model.run_with_hooks(tokens, fwd_hooks=[(_hook_name(layer), functools.partial(hook, heads=hs))
                                                         for layer, hs in by_layer.items()])
        return sign * in_context_learning_score(per_token_loss(logits, tokens))

    return ablated_icl_score


def _reference_icl(tokens, heads, mean=True):
    return ref.ablated_icl_score(attn_only_2l(), tokens, heads, mean)


ABLATED_ICL_SCORE = Exercise(
    chapter=CHAPTER,
    name="ablated_icl_score",
    reference=_reference_icl,
    make_inputs=_icl_inputs,
    rtol=1e-4, atol=1e-4,
    misconceptions=(
        misconception("nothing ablated", "Your score is the model's own, as if no head were ablated: the hooks never "
                      "ran. Pass them to the forward pass: model2.run_with_hooks(tokens, fwd_hooks=[(name, hook), "
                      "...]) with one entry per layer that has heads to ablate (model2(tokens) runs no hooks).",
                      _icl_variant(none=True)),
        misconception("zero and mean swapped", "You swapped the two ablations: mean=True must mean-ablate the heads "
                      "(your mean_ablation_hook) and mean=False zero-ablate them (your zero_ablation_hook).",
                      _icl_variant(swap=True)),
        misconception("every head put in layer 1", "You ablated every listed head in layer 1, whatever its layer. "
                      "heads holds (layer, head) pairs: hook blocks.{layer}.attn.hook_z for each layer, with that "
                      "layer's heads.", _icl_variant(layer_as=1)),
        misconception("every head put in layer 0", "You ablated every listed head in layer 0, whatever its layer. "
                      "heads holds (layer, head) pairs: hook blocks.{layer}.attn.hook_z for each layer, with that "
                      "layer's heads.", _icl_variant(layer_as=0)),
        misconception("whole layers ablated", "You ablated every head of each layer named, not just the listed "
                      "heads: bind each layer's own list of heads to its hook.", _icl_variant(whole_layers=True)),
        misconception("sign reversed", "Your sign is reversed: the score is the late tokens' loss MINUS the early "
                      "tokens' (negative when the model uses its context), as in_context_learning_score returns it.",
                      _icl_variant(sign=-1.0)),
    ),
)


def ablated_icl_score(fn, cases: Cases = None) -> None:
    """Check ``fn(tokens[batch, 128], heads: list of (layer, head), mean: bool) -> float`` (the
    notebook's model2 with those heads ablated by your hooks) against attn-only-2l, on rows of
    held-out text."""
    run_check(ABLATED_ICL_SCORE, fn, cases)
