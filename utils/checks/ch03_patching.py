"""Checks for chapter 03's causal exercises: activation patching and direct logit attribution.

The experiment (``utils.induction.patching``): clean tokens BOS, r_1 .. r_n, r_1 .. r_n; corrupted
tokens BOS, s_1 .. s_n, r_1 .. r_n (the first copy replaced by fresh tokens). Every check runs the
student's function on three seeded random cases and on one real-model case, the bundled
attn-only-2l on 2 clean sequences of ``REAL_SEQ_LEN`` = 10 random tokens repeated
(``repeated_random_tokens(seed=0)``) and their corrupted versions (``corrupted_first_copy(seed=0)``),
both run with ``use_attn_result`` on:

* ``induction_logit_diff``: random logits (with an induction boost at the second copy) on random
  repeated tokens and their corrupted versions; real case: the clean run's logits.
* ``normalised_patching_metric``: random (patched, clean, corrupted) numbers; real case: the logit
  differences of the clean run, the corrupted run, and the corrupted run with the best layer-1 head
  patched from the clean run.
* ``patched_head_outputs`` and ``patched_residual_positions``: the caches are plain dicts, hook name
  -> tensor, holding for each layer l ``blocks.{l}.attn.hook_q/k/v/z/pattern/result`` and
  ``blocks.{l}.hook_resid_pre``, plus ``blocks.1.hook_resid_post`` (random cases: random tensors of
  the same shapes, two layers), so a function that reads the wrong hook still runs and is named.
  The real cases are layer 1 and ``blocks.1.hook_resid_pre``.
* ``head_logit_attribution``: random components, LayerNorm scales, W_U and repeated tokens (the
  first case square, d_model == d_vocab, so that indexing W_U's rows still runs and is named); real
  case: every head's ``hook_result`` (layers concatenated: 16 components), ``ln_final.hook_scale``
  and ``folded_unembed(model)``.

A mismatch is explained by the first catalogued mistake whose output the student's output
reproduces. Every variant differs from the reference on the first default case.

Why one module of ~580 lines: it is the catalogue of over 30 named mistakes for five exercises
that share one experiment (the clean and corrupted runs, their caches, ``real_run``); split further,
each part would import the others' private case builders.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from utils import induction as ref
from utils.checks.ch03_induction import attn_only_2l
from utils.checks.core import Cases, CheckFailure, Exercise, default_case, run_check
from utils.checks.toolkit import misconception, nan_as_inf, randint, random_pattern, rng

CHAPTER = "03"
EXERCISES = ["induction_logit_diff", "normalised_patching_metric", "patched_head_outputs",
             "patched_residual_positions", "head_logit_attribution"]
REAL_SEQ_LEN = 10  # the real-model cases: BOS + 2 x 10 tokens, batch 2
REAL_LAYER = 1  # patched_head_outputs' real case: the induction heads' layer
REAL_HOOK = "blocks.1.hook_resid_pre"  # patched_residual_positions' real case
N_LAYERS = 2  # of the random caches (as attn-only-2l)
_ATTN_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_pattern", "hook_result")


# --------------------------------------------------------------------------- shared helpers


def cache_keys(n_layers: int = N_LAYERS) -> list[str]:
    """The hooks every cache holds: each layer's resid_pre and attention hooks, and the last resid_post."""
    keys = []
    for layer in range(n_layers):
        keys.append(f"blocks.{layer}.hook_resid_pre")
        keys += [f"blocks.{layer}.attn.{hook}" for hook in _ATTN_HOOKS]
    return keys + [f"blocks.{n_layers - 1}.hook_resid_post"]


def _random_cache(g: torch.Generator, batch: int, pos: int, heads: int, d_head: int, d_model: int) -> dict:
    """A cache of random activations with the model's shapes (hook name -> tensor)."""
    cache = {}
    for name in cache_keys():
        hook = name.rsplit(".", 1)[1]
        if hook in ("hook_q", "hook_k", "hook_v", "hook_z"):
            cache[name] = torch.randn(batch, pos, heads, d_head, generator=g)
        elif hook == "hook_pattern":
            cache[name] = random_pattern(g, batch, heads, pos)
        elif hook == "hook_result":
            cache[name] = torch.randn(batch, pos, heads, d_model, generator=g)
        else:  # the residual stream
            cache[name] = torch.randn(batch, pos, d_model, generator=g)
    return cache


def _repeated_tokens(g: torch.Generator, batch: int, n: int, vocab: int) -> torch.Tensor:
    """BOS (0), then n random tokens (never 0) twice, as utils.induction.repeated_random_tokens."""
    r = torch.randint(1, vocab, (batch, n), generator=g)
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), r, r], dim=1)


@lru_cache(maxsize=1)
def real_run() -> dict:
    """attn-only-2l on clean and corrupted repeated random tokens, with use_attn_result on.
    The caches are plain dicts of cache_keys(); the rest is for the DLA case and the tests."""
    model = attn_only_2l()
    clean = ref.repeated_random_tokens(model, seq_len=REAL_SEQ_LEN, batch=2, seed=0)
    corrupted = ref.corrupted_first_copy(clean, REAL_SEQ_LEN, model.cfg.d_vocab, seed=0)
    keys = cache_keys(model.cfg.n_layers)
    wanted = set(keys) | {"ln_final.hook_scale"}
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            clean_logits, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n in wanted)
            corrupted_logits, corrupted_cache = model.run_with_cache(corrupted, names_filter=lambda n: n in wanted)
    finally:
        model.set_use_attn_result(False)
    return dict(
        clean_tokens=clean, corrupted_tokens=corrupted, clean_logits=clean_logits,
        corrupted_logits=corrupted_logits,
        clean_cache={k: clean_cache[k] for k in keys}, corrupted_cache={k: corrupted_cache[k] for k in keys},
        results=torch.cat([clean_cache[f"blocks.{l}.attn.hook_result"] for l in range(model.cfg.n_layers)], dim=2),
        final_scale=clean_cache["ln_final.hook_scale"],
        W_U=ref.folded_unembed(model).detach(),
    )


def _returns(fn, exercise: str, stacked: bool = False):
    """The student's function, refusing a None result (a function that edits in place and forgets to
    return) and, where one tensor is due (``stacked``), a list of tensors, with a clear message; NaN
    mapped to inf as everywhere."""
    if not callable(fn):
        return fn
    fn = nan_as_inf(fn)

    def wrapped(**inputs):
        out = fn(**inputs)
        if out is None:
            raise CheckFailure(f"{exercise} returned None: return the result (did you forget the return "
                               f"statement?).")
        if stacked and isinstance(out, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in out):
            raise CheckFailure(f"{exercise} returned a {type(out).__name__} of {len(out)} tensors; return one "
                               f"tensor with the entries along a new first axis (torch.stack).")
        return out

    return wrapped


def _caches(run: dict) -> dict:
    return dict(clean_cache=dict(run["clean_cache"]), corrupted_cache=dict(run["corrupted_cache"]))


# --------------------------------------------------------------------------- 4a. the induction logit difference


def _logit_diff_inputs(seed: int) -> dict:
    """Random logits with the clean next token boosted at the second copy (so the difference is
    positive, as in a model with induction heads), random repeated tokens and their corruption."""
    g = rng(seed)
    batch, n = randint(g, 2, 3), randint(g, 4, 7)
    vocab = 3 * n + randint(g, 5, 15)
    clean = _repeated_tokens(g, batch, n, vocab)
    corrupted = ref.corrupted_first_copy(clean, n, vocab, seed=randint(g, 0, 10 ** 6))
    logits = torch.randn(batch, 1 + 2 * n, vocab, generator=g) * 2
    boost = torch.rand(batch, n - 1, generator=g) * 3
    rows = torch.arange(batch)[:, None]
    logits[rows, torch.arange(n + 1, 2 * n)[None], clean[:, n + 2:]] += boost
    return dict(logits=logits, clean_tokens=clean, corrupted_tokens=corrupted, seq_len=n)


def _real_logit_diff_inputs() -> dict:
    run = real_run()
    return dict(logits=run["clean_logits"], clean_tokens=run["clean_tokens"],
                corrupted_tokens=run["corrupted_tokens"], seq_len=REAL_SEQ_LEN)


def _diffs(logits, positions, right, wrong):
    """logits[b, positions, right] - logits[b, positions, wrong], [batch, len(positions)]."""
    q = logits[:, positions]
    return (q.gather(-1, right[..., None]) - q.gather(-1, wrong[..., None]))[..., 0]


def _logit_diff_variant(*, sign=1.0, right_at=2, wrong_at=2, first=None, wrong_second_copy=False,
                        reduce="mean"):
    """The logit difference with one thing changed. right_at / wrong_at: offset of the compared token
    from the current one (2 = the next, as it should be; 1 = the current token). first: the first
    query position (None: n + 1, as it should be; "n": position n included; 1: the first copy added)."""
    def induction_logit_diff(logits, clean_tokens, corrupted_tokens, seq_len):
        n = seq_len
        if first == 1:  # the first copy's r_1 .. r_(n-1) too, with the same targets
            positions = list(range(1, n)) + list(range(n + 1, 2 * n))
            js = list(range(1, n)) * 2
        else:
            start = n if first == "n" else n + 1
            positions = list(range(start, 2 * n))
            js = [p - n for p in positions]
        right = clean_tokens[:, [n + j + right_at - 1 for j in js]]
        source = [n + j + wrong_at - 1 for j in js] if wrong_second_copy else [j + wrong_at - 1 for j in js]
        wrong = corrupted_tokens[:, source]
        diff = sign * _diffs(logits, positions, right, wrong)
        if reduce == "per_sequence":
            return diff.mean(-1)
        return float(diff.sum() if reduce == "sum" else diff.mean())

    return induction_logit_diff


def _each_runs_next_token(logits, clean_tokens, corrupted_tokens, seq_len):
    positions = list(range(logits.shape[1] - 1))
    return float(_diffs(logits, positions, clean_tokens[:, 1:], corrupted_tokens[:, 1:]).mean())


INDUCTION_LOGIT_DIFF = Exercise(
    chapter=CHAPTER,
    name="induction_logit_diff",
    reference=ref.induction_logit_diff,
    make_inputs=_logit_diff_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real_logit_diff_inputs,),
    misconceptions=(
        misconception("sign reversed", "Your sign is reversed: the metric is logit(r_(j+1)) - logit(s_(j+1)), the "
           "clean first copy's next token MINUS the corrupted first copy's, so it is large and positive when the model "
           "copies from the clean first copy.",
           _logit_diff_variant(sign=-1.0)),
        misconception("targets not shifted", "Off by one: you scored the logits at position n + j against the tokens "
           "AT n + j (r_j, and s_j). The logits at a position predict the NEXT token: at n + j compare r_(j+1) = "
           "clean_tokens[:, n + j + 1] with s_(j+1) = corrupted_tokens[:, j + 1].",
           _logit_diff_variant(right_at=1, wrong_at=1)),
        misconception("s_j instead of s_(j+1)", "Your wrong token is off by one: you took s_j = corrupted_tokens[:, "
           "j], the corrupted counterpart of the CURRENT token r_j. The alternative an induction head would copy is "
           "the token AFTER it in the corrupted first copy, s_(j+1) = corrupted_tokens[:, j + 1] (the same offset as "
           "r_(j+1)): corrupted_tokens[:, 2:n + 1].",
           _logit_diff_variant(wrong_at=1)),
        misconception("first-copy positions included", "You also averaged over the FIRST copy's positions 1 .. n - 1. "
           "Nothing has repeated there yet, so induction cannot predict anything; average only over the second-copy "
           "positions n + 1 .. 2n - 1 (logits[:, n + 1:2 * n]).",
           _logit_diff_variant(first=1)),
        misconception("position n included", "You included position n, the first copy's last token r_n, whose next "
           "token is the second copy's r_1: nothing earlier predicts that, so it is not an induction prediction. Start "
           "at n + 1: positions n + 1 .. 2n - 1 (r_1 .. r_(n-1) of the second copy) predicting r_2 .. r_n.",
           _logit_diff_variant(first="n")),
        misconception("wrong token from the corrupted second copy", "Your metric is 0 whatever the logits: you took "
           "the wrong token from the corrupted tokens' SECOND copy, which is the same r_(j+1) as the right one (both "
           "runs end with r_1 .. r_n). The alternative is s_(j+1) from the corrupted FIRST copy: "
           "corrupted_tokens[:, j + 1], i.e. corrupted_tokens[:, 2:n + 1].",
           _logit_diff_variant(wrong_second_copy=True)),
        misconception("each run's next token at every position", "You compared, at every position, the clean tokens' "
           "next token with the corrupted tokens' next token (clean_tokens[:, 1:] against corrupted_tokens[:, 1:]) and "
           "averaged over the whole sequence. Over the second copy those are the same token, so the positions "
           "that matter contribute 0 and the unpredictable first copy dominates. Average only over the "
           "second-copy positions n + 1 .. 2n - 1, comparing r_(j+1) with s_(j+1) = corrupted_tokens[:, j + 1].",
           _each_runs_next_token),
        misconception("sum instead of mean", "You summed the logit differences. Average them over the batch and the n "
           "- 1 positions, so the metric does not grow with the batch size or the sequence length.",
           _logit_diff_variant(reduce="sum")),
        misconception("one number per sequence", "You returned one logit difference per sequence; average over the "
           "batch too and return a single number (a float).",
           _logit_diff_variant(reduce="per_sequence")),
    ),
)
# A log_softmax version is correct, not a mistake: at one position log-probabilities differ from
# the logits by the same constant (the log-sum-exp), so their differences are the logit differences.


def induction_logit_diff(fn, cases: Cases = None) -> None:
    """Check ``fn(logits[batch, 2n + 1, d_vocab], clean_tokens, corrupted_tokens, seq_len=n) -> float``;
    the real-model case is attn-only-2l's clean logits on repeated random tokens (n = 10)."""
    run_check(INDUCTION_LOGIT_DIFF, _returns(fn, "induction_logit_diff"), cases)


# --------------------------------------------------------------------------- 4b. the normalised metric


def _metric_inputs(seed: int) -> dict:
    """A clean metric well above the corrupted one, and a patched one mostly between them."""
    g = rng(seed)
    clean = 2 + 4 * float(torch.rand(1, generator=g))
    corrupted = -1.5 + 2 * float(torch.rand(1, generator=g))
    fraction = -0.2 + 1.3 * float(torch.rand(1, generator=g))
    return dict(patched=corrupted + fraction * (clean - corrupted), clean=clean, corrupted=corrupted)


@lru_cache(maxsize=1)
def _real_metric_inputs() -> dict:
    """The clean and corrupted logit differences, and the corrupted run's with the layer-1 head that
    restores the most patched from the clean run."""
    run, model = real_run(), attn_only_2l()
    tokens = dict(clean_tokens=run["clean_tokens"], corrupted_tokens=run["corrupted_tokens"], seq_len=REAL_SEQ_LEN)
    metric = lambda logits: ref.induction_logit_diff(logits, **tokens)  # noqa: E731
    clean, corrupted = metric(run["clean_logits"]), metric(run["corrupted_logits"])
    table = ref.head_patching_table(model, run["clean_cache"], run["corrupted_cache"], run["corrupted_tokens"],
                                    metric)
    return dict(patched=float(table[REAL_LAYER].max()), clean=clean, corrupted=corrupted)


NORMALISED_PATCHING_METRIC = Exercise(
    chapter=CHAPTER,
    name="normalised_patching_metric",
    reference=ref.normalised_patching_metric,
    make_inputs=_metric_inputs,
    rtol=1e-4, atol=1e-6,
    extra_inputs=(lambda: dict(_real_metric_inputs()),),
    misconceptions=(
        misconception("not normalised", "You returned the patched metric itself. Normalise it: (patched - corrupted) / "
           "(clean - corrupted) is 0 when patching changed nothing and 1 when it restored the clean behaviour, so "
           "patches (and experiments) can be compared.",
           lambda patched, clean, corrupted: patched),
        misconception("baseline subtracted, not divided", "You subtracted the corrupted baseline but did not divide by "
           "the gap between the runs: (patched - corrupted) / (clean - corrupted), so that a full restoration reads 1.",
           lambda patched, clean, corrupted: patched - corrupted),
        misconception("divided by clean only", "You divided by the clean metric only, ignoring the corrupted baseline: "
           "then 'nothing restored' reads corrupted / clean instead of 0. Subtract the baseline in the numerator and "
           "the denominator: (patched - corrupted) / (clean - corrupted).",
           lambda patched, clean, corrupted: patched / clean),
        misconception("scale reversed (1 = corrupted)", "Your scale is reversed: (clean - patched) / (clean - "
           "corrupted) (the same as (patched - clean) / (corrupted - clean)) is 0 at the CLEAN run and 1 at the "
           "corrupted one, so it measures how much was lost. The scale starts at the corrupted run: (patched - "
           "corrupted) / (clean - corrupted), 0 = corrupted, 1 = clean.",
           lambda patched, clean, corrupted: (clean - patched) / (clean - corrupted)),
        misconception("measured from the clean run", "You measured from the clean run: (patched - clean) / (clean - "
           "corrupted) is 0 at the clean run and -1 at the corrupted one. Subtract the CORRUPTED metric in the "
           "numerator: (patched - corrupted) / (clean - corrupted).",
           lambda patched, clean, corrupted: (patched - clean) / (clean - corrupted)),
        misconception("denominator reversed", "Your denominator is reversed (corrupted - clean): restoring the clean "
           "behaviour then reads -1. Divide by clean - corrupted: (patched - corrupted) / (clean - corrupted).",
           lambda patched, clean, corrupted: (patched - corrupted) / (corrupted - clean)),
    ),
)


def normalised_patching_metric(fn, cases: Cases = None) -> None:
    """Check ``fn(patched, clean, corrupted) -> float`` (three numbers); the real-model case is the
    logit differences of attn-only-2l's clean, corrupted and best-head-patched runs."""
    run_check(NORMALISED_PATCHING_METRIC, _returns(fn, "normalised_patching_metric"), cases)


# --------------------------------------------------------------------------- 4c. patching each head's output


_HEAD_LAYER_BY_CASE = {0: 1, 1: 0, 2: 1}


def _head_inputs(seed: int) -> dict:
    """Two random caches; more positions than heads (so indexing positions for heads still runs)."""
    g = rng(seed)
    batch, heads, d_head = randint(g, 2, 3), randint(g, 2, 4), randint(g, 2, 4)
    pos, d_model = heads + randint(g, 1, 3), randint(g, 4, 6)
    clean = _random_cache(g, batch, pos, heads, d_head, d_model)
    corrupted = _random_cache(g, batch, pos, heads, d_head, d_model)
    case = default_case("patched_head_outputs", seed)
    layer = _HEAD_LAYER_BY_CASE.get(case) if case is not None else None
    return dict(clean_cache=clean, corrupted_cache=corrupted,
                layer=layer if layer is not None else randint(g, 0, N_LAYERS - 1))


def _real_head_inputs() -> dict:
    return dict(_caches(real_run()), layer=REAL_LAYER)


def _head_variant(*, hook="hook_z", layer_of=lambda layer: layer, reverse=False, axis=2, mode="one"):
    """patched_head_outputs with one thing changed. mode "one": head h alone (right); "prefix": heads
    0 .. h (one tensor edited in turn); "all": every head (the same tensor in every entry)."""
    def patched_head_outputs(clean_cache, corrupted_cache, layer):
        name = f"blocks.{layer_of(layer)}.attn.{hook}"
        clean, corrupted = clean_cache[name], corrupted_cache[name]
        if reverse:
            clean, corrupted = corrupted, clean
        n_heads = clean.shape[2]
        running = corrupted.clone()
        out = []
        for h in range(n_heads):
            z = running if mode != "one" else corrupted.clone()
            sel = (slice(None),) * axis + (h,)
            z[sel] = clean[sel]
            out.append(z.clone() if mode == "prefix" else z)
        return torch.stack(out)  # mode "all": n_heads references to one tensor, every head patched

    return patched_head_outputs


PATCHED_HEAD_OUTPUTS = Exercise(
    chapter=CHAPTER,
    name="patched_head_outputs",
    reference=ref.patched_head_outputs,
    make_inputs=_head_inputs,
    rtol=1e-5, atol=1e-6,
    extra_inputs=(_real_head_inputs,),
    misconceptions=(
        misconception("wrong direction", "You patched the wrong way round: you pasted the CORRUPTED run's head into "
           "the clean run's z, which measures what breaks, not what restores. Entry h is the corrupted run's hook_z "
           "with head h's slice taken from the CLEAN run: start from corrupted_cache[...], paste "
           "clean_cache[...][:, :, h].",
           _head_variant(reverse=True)),
        misconception("patches accumulate", "Your patches accumulate: entry h has heads 0 .. h all taken from the "
           "clean run, because you kept editing one tensor (cloned once, before the loop). Each entry patches head h "
           "ALONE: start every entry from a fresh copy of the corrupted z (corrupted.clone() inside the loop, or "
           "corrupted.repeat(...) once and edit entry h only).",
           _head_variant(mode="prefix")),
        misconception("every head patched in every entry", "Every entry of your result has EVERY head taken from the "
           "clean run (it is the clean z). Either you appended the same tensor each time (z = corrupted; z[:, :, h] = "
           "...; out.append(z) without .clone(): the list holds one tensor, edited head after head, and you also "
           "overwrote the cache) or you patched the whole layer. Entry h patches head h alone: a fresh "
           "corrupted.clone() per head.",
           _head_variant(mode="all")),
        misconception("values patched (hook_v)", "You patched the head's VALUES (blocks.{layer}.attn.hook_v), not its "
           "output. A head's output before W_O is hook_z, the pattern-weighted sum of the values: patch "
           "f\"blocks.{layer}.attn.hook_z\".",
           _head_variant(hook="hook_v")),
        misconception("queries patched (hook_q)", "You patched the head's QUERIES (blocks.{layer}.attn.hook_q), not "
           "its output. A head's output before W_O is hook_z: patch f\"blocks.{layer}.attn.hook_z\".",
           _head_variant(hook="hook_q")),
        misconception("positions instead of heads", "You indexed the POSITION axis: z[:, h] is position h. hook_z is "
           "[batch, pos, head, d_head], so head h is z[:, :, h].",
           _head_variant(axis=1)),
        misconception("the other layer", "You patched the other layer's hook_z (a hard-coded layer number?). Use the "
           "layer you are given: f\"blocks.{layer}.attn.hook_z\" in both caches.",
           _head_variant(layer_of=lambda layer: N_LAYERS - 1 - layer)),
    ),
)


def patched_head_outputs(fn, cases: Cases = None) -> None:
    """Check ``fn(clean_cache, corrupted_cache, layer) -> [head, batch, pos, head, d_head]`` (caches:
    dicts hook name -> tensor); the real-model case is layer 1 of attn-only-2l."""
    run_check(PATCHED_HEAD_OUTPUTS, _returns(fn, "patched_head_outputs", stacked=True), cases)


# --------------------------------------------------------------------------- 4d. patching residual positions


_RESID_HOOKS = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post")
_RESID_HOOK_BY_CASE = {0: "blocks.1.hook_resid_pre", 1: "blocks.1.hook_resid_post", 2: "blocks.1.hook_resid_pre"}


def _resid_inputs(seed: int) -> dict:
    """Two random caches. The default cases have at least as many sequences as positions (so
    indexing the batch for the positions still runs) and never blocks.0.hook_resid_pre (so ignoring
    hook_name for it shows)."""
    g = rng(seed)
    case = default_case("patched_residual_positions", seed)
    pos = randint(g, 3, 5)
    batch = pos + randint(g, 0, 1) if case is not None else randint(g, 1, 4)
    heads, d_head, d_model = randint(g, 2, 3), randint(g, 2, 3), randint(g, 4, 6)
    clean = _random_cache(g, batch, pos, heads, d_head, d_model)
    corrupted = _random_cache(g, batch, pos, heads, d_head, d_model)
    hook = _RESID_HOOK_BY_CASE.get(case) if case is not None else None
    return dict(clean_cache=clean, corrupted_cache=corrupted,
                hook_name=hook or _RESID_HOOKS[randint(g, 0, len(_RESID_HOOKS) - 1)])


def _real_resid_inputs() -> dict:
    return dict(_caches(real_run()), hook_name=REAL_HOOK)


def _resid_variant(*, hook=None, reverse=False, axis=1, mode="one"):
    def patched_residual_positions(clean_cache, corrupted_cache, hook_name):
        name = hook or hook_name
        clean, corrupted = clean_cache[name], corrupted_cache[name]
        if reverse:
            clean, corrupted = corrupted, clean
        running = corrupted.clone()
        out = []
        for p in range(clean.shape[1]):
            x = running if mode != "one" else corrupted.clone()
            sel = (slice(None),) * axis + (p,)
            x[sel] = clean[sel]
            out.append(x.clone() if mode == "prefix" else x)
        return torch.stack(out)

    return patched_residual_positions


PATCHED_RESIDUAL_POSITIONS = Exercise(
    chapter=CHAPTER,
    name="patched_residual_positions",
    reference=ref.patched_residual_positions,
    make_inputs=_resid_inputs,
    rtol=1e-5, atol=1e-6,
    extra_inputs=(_real_resid_inputs,),
    misconceptions=(
        misconception("wrong direction", "You patched the wrong way round: you pasted the CORRUPTED run's position "
           "into the clean run's residual stream. Entry p is the corrupted run's residual stream with position p taken "
           "from the CLEAN run: start from corrupted_cache[hook_name], paste clean_cache[hook_name][:, p].",
           _resid_variant(reverse=True)),
        misconception("patches accumulate (a prefix)", "Entry p of your result has positions 0 .. p all taken from the "
           "clean run: either your patches accumulated in one tensor you kept editing (cloned once, before the loop) "
           "or you patched the prefix [:, :p + 1]. Entry p patches position p ALONE (every sequence of the batch): a "
           "fresh copy of the corrupted residual stream per position, then x[:, p] = clean[:, p].",
           _resid_variant(mode="prefix")),
        misconception("every position patched in every entry", "Every entry of your result has EVERY position taken "
           "from the clean run (it is the clean residual stream): you appended the same tensor each time (x = "
           "corrupted; x[:, p] = ...; out.append(x) without .clone(): the list holds one tensor, edited position after "
           "position, and you also overwrote the cache). Entry p patches position p alone: a fresh "
           "corrupted.clone() per position.",
           _resid_variant(mode="all")),
        misconception("batch instead of positions", "You patched along the BATCH axis: x[p] is sequence p of the "
           "batch. The residual stream is [batch, pos, d_model], so position p is x[:, p] (every sequence at once).",
           _resid_variant(axis=0)),
        misconception("hook_name ignored", "You ignored hook_name and always patched blocks.0.hook_resid_pre. Patch "
           "the residual stream the argument names: clean_cache[hook_name] and corrupted_cache[hook_name].",
           _resid_variant(hook="blocks.0.hook_resid_pre")),
    ),
)


def patched_residual_positions(fn, cases: Cases = None) -> None:
    """Check ``fn(clean_cache, corrupted_cache, hook_name) -> [pos, batch, pos, d_model]`` (caches:
    dicts hook name -> tensor); the real-model case is attn-only-2l's blocks.1.hook_resid_pre."""
    run_check(PATCHED_RESIDUAL_POSITIONS, _returns(fn, "patched_residual_positions", stacked=True), cases)


# --------------------------------------------------------------------------- 4e. direct logit attribution


def _dla_inputs(seed: int) -> dict:
    """Random components with a nonzero mean over d_model (so centring matters), per-position scales
    and repeated random tokens. The first default case (and a third of the hidden ones) is square,
    d_model == d_vocab, so indexing W_U's rows with tokens still runs."""
    g = rng(seed)
    case = default_case("head_logit_attribution", seed)
    square = case == 0 if case is not None else seed % 3 == 0
    batch, n, comps = randint(g, 2, 3), randint(g, 3, 5), randint(g, 3, 5)
    if square:
        d_model = vocab = randint(g, 5, 7)
    else:
        d_model = randint(g, 4, 7)
        vocab = d_model + randint(g, 4, 12)
    tokens = _repeated_tokens(g, batch, n, vocab)
    pos = 1 + 2 * n
    results = torch.randn(batch, pos, comps, d_model, generator=g) + 2 * torch.randn(batch, pos, comps, 1, generator=g)
    final_scale = 0.5 + 1.5 * torch.rand(batch, pos, 1, generator=g)
    W_U = torch.randn(d_model, vocab, generator=g)
    return dict(results=results, final_scale=final_scale, W_U=W_U, tokens=tokens, seq_len=n)


def _real_dla_inputs() -> dict:
    run = real_run()
    return dict(results=run["results"], final_scale=run["final_scale"], W_U=run["W_U"], tokens=run["clean_tokens"],
                seq_len=REAL_SEQ_LEN)


def _dla_variant(*, centre=True, scale="divide", offset=1, positions="second", reduce="mean", rows=False):
    """head_logit_attribution with one thing changed. offset: the token scored at position p is
    tokens[p + offset] (1: the next, right; 0: the current)."""
    def head_logit_attribution(results, final_scale, W_U, tokens, seq_len):
        n = seq_len
        x = results - results.mean(-1, keepdim=True) if centre else results
        if scale == "divide":
            x = x / final_scale[:, :, None]
        elif scale == "multiply":
            x = x * final_scale[:, :, None]
        q = torch.arange(n + 1, 2 * n) if positions == "second" else torch.arange(0, 2 * n)
        targets = tokens[:, q + offset]
        directions = W_U[targets] if rows else W_U.T[targets]  # [batch, q, d_model]
        dla = torch.einsum("bqcd,bqd->bqc", x[:, q], directions)
        return dla.sum((0, 1)) if reduce == "sum" else dla.mean((0, 1))

    return head_logit_attribution


HEAD_LOGIT_ATTRIBUTION = Exercise(
    chapter=CHAPTER,
    name="head_logit_attribution",
    reference=ref.head_logit_attribution,
    make_inputs=_dla_inputs,
    rtol=1e-4, atol=1e-5,
    extra_inputs=(_real_dla_inputs,),
    misconceptions=(
        misconception("final LayerNorm scale ignored", "You did not divide by the final LayerNorm's scale. ln_final "
           "divides the centred residual stream by final_scale (one number per sequence and position) before W_U, so "
           "each component's share of the logit is divided by it too: centre(result) / final_scale @ W_U[:, token].",
           _dla_variant(scale=None)),
        misconception("scale multiplied", "You multiplied by final_scale. The LayerNorm DIVIDES the centred residual "
           "stream by its scale: centre(result) / final_scale (final_scale[:, :, None] to broadcast over the "
           "components).",
           _dla_variant(scale="multiply")),
        misconception("not centred", "You did not centre the components. LayerNorm first subtracts the mean over "
           "d_model, which is linear too: subtract each component's own mean, result - result.mean(-1, keepdim=True), "
           "before dividing by the scale.",
           _dla_variant(centre=False)),
        misconception("current token instead of next", "Off by one: you used the unembedding of the CURRENT token. The "
           "logits at position n + j predict the next token r_(j+1) = tokens[:, n + j + 1]: for the positions "
           "n + 1 .. 2n - 1 use the columns W_U[:, tokens[:, n + 2:2 * n + 1]].",
           _dla_variant(offset=0)),
        misconception("every position averaged", "You averaged over every position, each predicting its next token. "
           "Only the second-copy predictions are induction (positions n + 1 .. 2n - 1, predicting r_2 .. r_n); the "
           "first copy is unpredictable and dilutes the attribution.",
           _dla_variant(positions="all")),
        misconception("sum instead of mean", "You summed over the batch and the positions. Average them, so the "
           "attribution is in logits per prediction and does not grow with the batch or the sequence length.",
           _dla_variant(reduce="sum")),
        misconception("rows of W_U", "You indexed W_U's ROWS with the token ids (W_U[tokens], as you would W_E). W_U "
           "is [d_model, d_vocab]: a token's unembedding direction is its COLUMN, W_U[:, token] (or W_U.T[tokens]).",
           _dla_variant(rows=True)),
    ),
)


def head_logit_attribution(fn, cases: Cases = None) -> None:
    """Check ``fn(results[batch, 2n + 1, component, d_model], final_scale[batch, 2n + 1, 1], W_U, tokens,
    seq_len=n) -> [component]``; the real-model case is attn-only-2l's 16 heads (layers concatenated),
    ln_final.hook_scale and folded_unembed(model)."""
    run_check(HEAD_LOGIT_ATTRIBUTION, _returns(fn, "head_logit_attribution"), cases)
