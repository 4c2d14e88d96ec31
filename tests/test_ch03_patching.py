"""Chapter 03's activation patching and direct logit attribution (utils/induction/patching.py) against
the model itself: patched runs against hooks that edit the live activation, and the attributions of
every component against the model's logits, on attn-only-2l's clean and corrupted repeated tokens."""
import pytest
import torch

from utils import induction as ind
from utils.checks import ch03 as check
from utils.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQ_LEN = 10  # BOS + 2 x 10 random tokens, batch 2: the patching checks' real-model case


@pytest.fixture(scope="module")
def model():
    return load_model("attn-only-2l", device="cpu")


@pytest.fixture(scope="module")
def run(model):
    """Clean and corrupted repeated random tokens, their logits and caches."""
    clean = ind.repeated_random_tokens(model, seq_len=SEQ_LEN, batch=2, seed=0)
    corrupted = ind.corrupted_first_copy(clean, SEQ_LEN, model.cfg.d_vocab, seed=0)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        corrupted_logits, corrupted_cache = model.run_with_cache(corrupted)
    return dict(clean_tokens=clean, corrupted_tokens=corrupted, corrupted_logits=corrupted_logits,
                clean_cache=dict(clean_cache.items()), corrupted_cache=dict(corrupted_cache.items()))


def test_direct_logit_attributions_add_up_to_the_logits(model, run):
    """Every component that writes to the residual stream (the embedding, each head's hook_result,
    each layer's b_O) attributed with head_logit_attribution, plus what the final LayerNorm's bias
    and b_U add, is the model's logit of the correct next token, averaged over the same positions."""
    tokens, n = run["clean_tokens"], SEQ_LEN
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
    finally:
        model.set_use_attn_result(False)
    parts = [cache["hook_embed"][:, :, None]]
    if model.cfg.positional_embedding_type != "shortformer":  # shortformer: positions only enter Q and K
        parts.append(cache["hook_pos_embed"][:, :, None])
    for layer in range(model.cfg.n_layers):
        parts.append(cache[f"blocks.{layer}.attn.hook_result"])
        parts.append(model.blocks[layer].attn.b_O.detach().expand_as(cache["hook_embed"])[:, :, None])
    components = torch.cat(parts, dim=2)
    torch.testing.assert_close(components.sum(2), cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"],
                               rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        dla = ind.head_logit_attribution(components, cache["ln_final.hook_scale"], ind.folded_unembed(model), tokens, n)
        target = tokens[:, n + 2:]
        constant = (model.ln_final.b @ model.W_U + model.b_U)[target].mean()
        actual = logits[:, n + 1:2 * n].gather(-1, target[..., None]).mean()
    assert abs(float(dla.sum() + constant) - float(actual)) < 1e-3
    # and the check's own real case is the head part of it
    heads = ind.head_logit_attribution(**check.HEAD_LOGIT_ATTRIBUTION.extra_inputs[0]())
    torch.testing.assert_close(heads, torch.cat([dla[1:9], dla[10:18]]), rtol=1e-4, atol=1e-5)


def _live_patch(model, tokens, name, edit):
    def hook(act, hook):
        edit(act)
        return act
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])


def _returning(model, tokens, name, value):
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(name, lambda act, hook: value)])


def test_patched_head_outputs_is_what_a_patching_hook_does(model, run):
    clean_cache, corrupted = run["clean_cache"], run["corrupted_tokens"]
    for layer, heads in ((0, (0, 7)), (1, (3, 5))):
        name = f"blocks.{layer}.attn.hook_z"
        entries = ind.patched_head_outputs(clean_cache, run["corrupted_cache"], layer)
        for h in heads:
            def edit(z, h=h):
                z[:, :, h] = clean_cache[name][:, :, h]
            brute = _live_patch(model, corrupted, name, edit)
            torch.testing.assert_close(_returning(model, corrupted, name, entries[h]), brute, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(brute, run["corrupted_logits"], atol=1e-3)  # the patch changed something


def test_patched_residual_positions_is_what_a_patching_hook_does(model, run):
    clean_cache, corrupted = run["clean_cache"], run["corrupted_tokens"]
    for name in ind.residual_hook_names(model):
        entries = ind.patched_residual_positions(clean_cache, run["corrupted_cache"], name)
        for p in (3, SEQ_LEN + 4):
            def edit(x, p=p):
                x[:, p] = clean_cache[name][:, p]
            brute = _live_patch(model, corrupted, name, edit)
            torch.testing.assert_close(_returning(model, corrupted, name, entries[p]), brute, rtol=1e-5, atol=1e-5)
            if not torch.equal(clean_cache[name][:, p], run["corrupted_cache"][name][:, p]):
                assert not torch.allclose(brute, run["corrupted_logits"], atol=1e-3)
            else:  # a second-copy token before any attention: the same in both runs
                assert name == "blocks.0.hook_resid_pre" and p > SEQ_LEN
