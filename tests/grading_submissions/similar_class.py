"""A generated chapter-01 class for the similarity report (tests/test_similarity.py).

``reference``: the course's own solutions. ``renamed``: the same code with every local name and
argument renamed and the source reformatted (``ast.unparse``: comments gone, quotes and spacing
changed). ``reordered``: the same functions, each moved to another solution cell (so they appear
in another order). ``honest_1`` and ``honest_2``: independent solutions written differently (and
not all complete). Expected pairs: exactly the three among reference, renamed and reordered.
"""
from __future__ import annotations

import ast
import builtins

from grading_submissions import _solutions, chapter, set_cell

SLUG = "01_tensorized_attention"
FUNCTIONS = ("attention_pattern", "head_output", "tensor_head_einsum", "tensor_head_kron", "multihead_residual",
             "path_logits", "read_write_weights", "virtual_weight", "compose_heads")

HONEST_1 = {
    "attention_pattern": '''def attention_pattern(qk_input, W_Q, W_K, b_Q, b_K):
    batch, n, _ = qk_input.shape
    result = torch.zeros(batch, n, n)
    for b in range(batch):
        queries = qk_input[b] @ W_Q + b_Q
        keys = qk_input[b] @ W_K + b_K
        for i in range(n):
            logits = torch.stack([queries[i] @ keys[j] for j in range(i + 1)]) / math.sqrt(W_Q.shape[1])
            weights = torch.exp(logits - logits.max())
            result[b, i, : i + 1] = weights / weights.sum()
    return result
''',
    "head_output": '''def head_output(pattern, v_input, W_V, b_V, W_O):
    values = v_input @ W_V + b_V
    z = torch.zeros(pattern.shape[0], pattern.shape[1], W_V.shape[1])
    for b in range(pattern.shape[0]):
        for i in range(pattern.shape[1]):
            for j in range(i + 1):
                z[b, i] += pattern[b, i, j] * values[b, j]
    return z, z @ W_O
''',
    "multihead_residual": '''def multihead_residual(x0, A, W_V, W_O, b_V, b_O):
    total = x0.clone() + b_O
    for h in range(A.shape[1]):
        v = x0 @ W_V[h] + b_V[h]
        total += (A[:, h] @ v) @ W_O[h]
    return total
''',
    "read_write_weights": '''def read_write_weights(d_model, read_dims, write_dims):
    identity = torch.eye(d_model)
    return identity[:, list(read_dims)], identity[list(write_dims), :]
''',
    "path_logits": '''def path_logits(tokens, A, W_E, W_V, W_O, W_U, b_V, b_O, b_U):
    embedded = W_E[tokens]
    pieces = [embedded @ W_U]
    for h in range(A.shape[1]):
        pieces.append(A[:, h] @ (embedded @ W_V[h] @ W_O[h] @ W_U))
    bias_total = b_O.clone()
    for h in range(A.shape[1]):
        bias_total = bias_total + b_V[h] @ W_O[h]
    pieces.append((bias_total @ W_U + b_U).expand_as(pieces[0]))
    return torch.stack(pieces, dim=1)
''',
}

HONEST_2 = {
    "attention_pattern": '''def attention_pattern(qk_input, W_Q, W_K, b_Q, b_K):
    x = qk_input.double()
    scores = (x @ W_Q.double() + b_Q.double()) @ (x @ W_K.double() + b_K.double()).transpose(-1, -2)
    scores = scores / W_Q.shape[1] ** 0.5
    size = scores.shape[-1]
    blocked = torch.triu(torch.ones(size, size, dtype=torch.bool), diagonal=1)
    return torch.nn.functional.softmax(torch.where(blocked, torch.tensor(-1e5, dtype=torch.float64), scores), -1)
''',
    "head_output": '''def head_output(pattern, v_input, W_V, b_V, W_O):
    mixed = pattern @ (v_input @ W_V) + b_V
    return mixed, pattern @ (v_input @ W_V @ W_O) + b_V @ W_O
''',
    "tensor_head_kron": '''def tensor_head_kron(A, W_V, W_O, x):
    rows, cols = x.shape
    big = torch.kron((W_V @ W_O).T.contiguous(), A)
    return (big @ x.T.reshape(-1)).reshape(cols, rows).T
''',
    "multihead_residual": '''def multihead_residual(x0, A, W_V, W_O, b_V, b_O):
    b, h, n, _ = A.shape
    per_head = A @ (torch.einsum("bjd,hdk->bhjk", x0, W_V) + b_V[:, None])
    joined = per_head.permute(0, 2, 1, 3).reshape(b, n, -1)
    return x0 + joined @ W_O.reshape(-1, W_O.shape[-1]) + b_O
''',
    "compose_heads": '''def compose_heads(A_2, W_OV_2, A_1, W_OV_1):
    return torch.einsum("ik,kj->ij", A_2, A_1), torch.einsum("ab,bc->ac", W_OV_1, W_OV_2)
''',
}


class _Rename(ast.NodeTransformer):
    """Every argument and local name -> v0, v1, ... (module names and builtins stay)."""

    def __init__(self):
        self.names: dict[str, str] = {}

    def _new(self, name: str) -> str:
        return self.names.setdefault(name, f"v{len(self.names)}")

    def visit_arg(self, node):
        node.arg = self._new(node.arg)
        node.annotation = None
        return node

    def visit_Name(self, node):
        if node.id not in ("torch", "math", "einops", "Float", "Int") and not hasattr(builtins, node.id):
            node.id = self._new(node.id)
        return node


def renamed(source: str) -> str:
    tree = ast.parse(source)
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef):
            fn.returns = None
            if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant):
                fn.body = fn.body[1:]  # the docstring goes too
    return ast.unparse(_Rename().visit(tree)) + "\n"


def _code(source: str) -> str:
    return "\n".join(line for line in source.split("\n") if "### BEGIN SOLUTION" not in line
                     and "### END SOLUTION" not in line)


def build(root, write) -> None:
    """Write the class under ``root`` with ``write(root, slug, name, nb)``."""
    solutions = {gid: _code(src) for gid, src in _solutions(SLUG).items()}
    ids = [f"{name}_solution" for name in FUNCTIONS]
    write(root, SLUG, "reference", _filled(solutions))
    write(root, SLUG, "renamed", _filled({g: renamed(s) if g in ids else s for g, s in solutions.items()}))
    moved = dict(solutions)
    for i, gid in enumerate(ids):  # cell i holds the function of cell i+3
        moved[gid] = solutions[ids[(i + 3) % len(ids)]]
    write(root, SLUG, "reordered", _filled(moved))
    for name, own in (("honest_1", HONEST_1), ("honest_2", HONEST_2)):
        nb = chapter(SLUG)
        for fn, source in own.items():
            set_cell(nb, f"{fn}_solution", source)
        write(root, SLUG, name, nb)


def _filled(sources: dict):
    nb = chapter(SLUG)
    for gid, source in sources.items():
        set_cell(nb, gid, source)
    return nb
