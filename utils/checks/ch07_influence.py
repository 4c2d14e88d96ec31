"""Checks for chapter 07, exercises 3-5: influence, pruning, and the replacement and completeness
scores of a graph.

Inputs are small random attribution graphs shaped like real ones (``random_graph``): token and
error nodes with no inputs, features in two layers, logit nodes with probabilities, edges of both
signs, and the nodes in a scrambled order, so that (I - Â)^-1 and its transpose differ and no
formula can lean on the order. The reference answers are utils/attribution/exercises.py;
tests/test_ch07_checks.py tests them against a path-sum series and brute force. The notebook
reaches these checks through ``utils.checks.ch07``.
"""
from __future__ import annotations

import torch

from utils.attribution import exercises as ref
from utils.checks.core import Cases, Exercise, Misconception, run_check
from utils.checks.toolkit import describe_parts, randint, rng, run_described

CHAPTER = "07"


def random_graph(seed: int) -> dict:
    """{A [n, n] (target, source), error_nodes, token_nodes, logit_weights}: tokens and errors feed
    layer-0 features, which feed layer-1 features, all of which feed the logits."""
    g = rng(seed)
    n_tok, n_err, n_f0, n_f1, n_log = randint(g, 2, 3), randint(g, 2, 3), randint(g, 2, 4), randint(g, 2, 4), 2
    kinds = ["token"] * n_tok + ["error"] * n_err + ["f0"] * n_f0 + ["f1"] * n_f1 + ["logit"] * n_log
    n = len(kinds)
    feeds = {"f0": {"token", "error"}, "f1": {"token", "error", "f0"}, "logit": {"token", "error", "f0", "f1"}}
    A = torch.zeros(n, n, dtype=torch.float64)
    for t, kt in enumerate(kinds):
        for s, ks in enumerate(kinds):
            if ks in feeds.get(kt, ()) and float(torch.rand((), generator=g)) < 0.8:
                A[t, s] = float(torch.randn((), generator=g)) * 2
    order = torch.randperm(n, generator=g)  # scramble: nodes are in no topological order
    A = A[order][:, order]
    kinds = [kinds[i] for i in order.tolist()]
    probs = torch.rand(n_log, generator=g).double() * 0.5
    weights = torch.zeros(n, dtype=torch.float64)
    weights[[i for i, k in enumerate(kinds) if k == "logit"]] = probs
    return {"A": A, "error_nodes": torch.tensor([k == "error" for k in kinds]),
            "token_nodes": torch.tensor([k == "token" for k in kinds]), "logit_weights": weights}


# =========================================================================== 3. influence


def influence_inputs(seed: int) -> dict:
    return {"A": random_graph(seed)["A"]}


def _influence(A, *, absolute=True, rows=True, minus_eye=True, series=True, normalise=True, transpose=False):
    """influence_matrix with one step changed (the catalogued mistakes)."""
    M = A.abs() if absolute else A.clone()
    if normalise:
        total = M.sum(1 if rows else 0, keepdim=True)
        M = M / torch.where(total != 0, total, torch.ones_like(total))
    if transpose:
        M = M.T
    if not series:
        return M
    eye = torch.eye(len(A), dtype=A.dtype)
    inverse = torch.linalg.inv(eye - M)
    return inverse - eye if minus_eye else inverse


INFLUENCE = Exercise(
    chapter=CHAPTER,
    name="influence_matrix",
    reference=ref.influence_matrix,
    make_inputs=influence_inputs,
    rtol=1e-6, atol=1e-8,
    misconceptions=(
        Misconception(
            "signs kept",
            "Influence measures how MUCH of a node's input a source carries, whatever its sign: normalise |A|. "
            "With signs, a positive and a negative path cancel and an important node can look irrelevant.",
            lambda A: _influence(A, absolute=False)),
        Misconception(
            "columns normalised",
            "A[target, source]: a node's INCOMING edges are its row. Divide each row by its sum, so that every "
            "target's inputs are shares adding up to 1 (you divided each source's outgoing edges).",
            lambda A: _influence(A, rows=False)),
        Misconception(
            "identity kept",
            "(I - Â)^-1 = I + Â + Â² + ...: the I is the path of length 0 from a node to itself, which is not "
            "influence. Subtract it: B = (I - Â)^-1 - I.",
            lambda A: _influence(A, minus_eye=False)),
        Misconception(
            "direct edges only",
            "Influence sums over paths of EVERY length (Â + Â² + Â³ + ... = (I - Â)^-1 - I), so a source that acts "
            "through intermediate nodes counts too; Â alone is only the direct edges.",
            lambda A: _influence(A, series=False)),
        Misconception(
            "not normalised",
            "Normalise first: divide each row of |A| by its sum. Raw |A| mixes edge sizes across targets, and its "
            "series need not even converge.",
            lambda A: _influence(A, normalise=False)),
        Misconception(
            "transposed",
            "Â[target, source] composes as Â @ Â (target <- middle <- source): use (I - Â)^-1, not (I - Â^T)^-1, "
            "whose entry [t, s] follows the edges backwards.",
            lambda A: _influence(A, transpose=True)),
    ),
)


def influence_matrix(fn, cases: Cases = None) -> None:
    """Check ``fn(A) -> B = (I - Â)^-1 - I`` for row-normalised |A|."""
    run_check(INFLUENCE, fn, cases)


# =========================================================================== 4. pruning


def prune_inputs(seed: int) -> dict:
    g = rng(seed)
    n = randint(g, 10, 14)
    influence = 0.2 + torch.rand(n, generator=g).double() ** 2  # some large, more small
    influence[randint(g, 0, n - 1)] = 0.0
    influence *= 0.45 / influence.sum()  # as in a graph: the logits' inputs, shared out, sum below 1
    share = [0.5, 0.6, 0.7][randint(g, 0, 2)]
    return {"influence": influence, "share": share}


def _prune(influence, share, *, descending=True, crossing=True, normalise=True):
    values, order = influence.sort(descending=descending)
    cumulative = values.cumsum(0) / (values.sum() if normalise else 1.0)
    keep = int((cumulative < share).sum()) + (1 if crossing else 0)
    mask = torch.zeros(len(influence), dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


PRUNE = Exercise(
    chapter=CHAPTER,
    name="prune_mask",
    reference=ref.prune_mask,
    make_inputs=prune_inputs,
    misconceptions=(
        Misconception(
            "smallest first",
            "Take nodes by DECREASING influence: the point is the smallest set that carries the share, so the "
            "most influential nodes go in first.",
            lambda influence, share: _prune(influence, share, descending=False)),
        Misconception(
            "crossing node dropped",
            "Keep the node that takes the cumulative share over the line as well: without it the kept nodes "
            "carry LESS than the share asked for.",
            lambda influence, share: _prune(influence, share, crossing=False)),
        Misconception(
            "cumulative sum not normalised",
            "Compare the cumulative influence as a FRACTION of the total with the share (divide by the sum of all "
            "influences), not the raw cumulative sum.",
            lambda influence, share: _prune(influence, share, normalise=False)),
        Misconception(
            "share of the largest",
            "The share is of the TOTAL influence, accumulated node by node; keeping every node whose influence is "
            "at least share x the largest is a different (and unbounded) rule.",
            lambda influence, share: influence >= share * influence.max()),
    ),
)


def prune_mask(fn, cases: Cases = None) -> None:
    """Check ``fn(influence [n], share) -> bool mask [n]`` of the nodes kept."""
    run_check(PRUNE, fn, cases)


# =========================================================================== 5. replacement and completeness scores


def scores_inputs(seed: int) -> dict:
    return random_graph(seed)


def _scores(A, error_nodes, token_nodes, logit_weights, *, absolute=True, series=True, weighted=True,
            logit_weight_in=True, replacement_of_errors=False, only_with_inputs=True):
    M = A.abs() if absolute else A.clone()
    total = M.sum(1, keepdim=True)
    M = M / torch.where(total != 0, total, torch.ones_like(total))
    eye = torch.eye(len(A), dtype=A.dtype)
    influence = logit_weights @ ((torch.linalg.inv(eye - M) - eye) if series else M)
    to_tokens, to_errors = influence[token_nodes].sum(), influence[error_nodes].sum()
    replacement = float((to_errors if replacement_of_errors else to_tokens) / (to_tokens + to_errors))
    nodes = total[:, 0] != 0 if only_with_inputs else torch.ones(len(A), dtype=torch.bool)
    weight = influence + (logit_weights if logit_weight_in else 0)
    weight = weight[nodes] if weighted else torch.ones(int(nodes.sum()), dtype=A.dtype)
    non_error = 1 - M[nodes][:, error_nodes].sum(1)
    return replacement, float((non_error * weight).sum() / weight.sum())


SCORES = Exercise(
    chapter=CHAPTER,
    name="graph_scores",
    reference=ref.graph_scores,
    make_inputs=scores_inputs,
    rtol=1e-6, atol=1e-8,
    misconceptions=(
        Misconception(
            "signs kept",
            "Both scores are built on the normalised |A|: a negative edge carries influence as much as a positive "
            "one. With signs, shares cancel and can leave [0, 1].",
            lambda **kw: _scores(**kw, absolute=False)),
        Misconception(
            "direct edges only",
            "A node's influence on the output sums over paths of every length: w @ ((I - Â)^-1 - I), not w @ Â "
            "(which only counts the nodes that feed a logit directly).",
            lambda **kw: _scores(**kw, series=False)),
        Misconception(
            "error share as the replacement score",
            "The replacement score is the share of the sources' influence that reaches TOKENS: "
            "I_tokens / (I_tokens + I_errors). You returned the errors' share (1 minus it).",
            lambda **kw: _scores(**kw, replacement_of_errors=True)),
        Misconception(
            "completeness not weighted",
            "Weight each node's non-error share by how much it matters, influence + logit weight: a plain mean "
            "lets a node nobody listens to count as much as the answer itself.",
            lambda **kw: _scores(**kw, weighted=False)),
        Misconception(
            "logit weights left out of completeness",
            "The logit nodes influence nothing downstream (their influence is 0), yet their own inputs matter "
            "most: weight each node by influence + w, its logit weight.",
            lambda **kw: _scores(**kw, logit_weight_in=False)),
        Misconception(
            "nodes without inputs averaged in",
            "Completeness asks what share of each node's INPUT comes from non-error nodes: tokens and errors have "
            "no inputs and must not be counted (as complete) in the average.",
            lambda **kw: _scores(**kw, only_with_inputs=False)),
    ),
)


def graph_scores(fn, cases: Cases = None) -> None:
    """Check ``fn(A, error_nodes, token_nodes, logit_weights) -> (replacement, completeness)``."""
    run_described(SCORES, fn, cases, describe_parts(("replacement", "completeness"), SCORES.rtol, SCORES.atol))
