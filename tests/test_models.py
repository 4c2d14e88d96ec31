"""The hooked transformer against independent computations.

Oracles: a per-head, per-position loop written from the equations (no einsum, no shared code);
a TransformerLens 4.x native bridge built from our state dict (standard positions); and, when
transformer-lens 3.x is installed, a real HookedTransformer.
"""
import math

import pytest
import torch
from random_models import randomized  # biases and LayerNorm weights random too: no term hides behind a zero

from utils.models import HookedTinyTransformer, ModelConfig, lm_cross_entropy
from utils.models.loading import config_from_tl_json, load_pretrained, state_dict_from_tl

CONFIGS = {
    "attn1_shortformer": ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=4, d_vocab=23, n_ctx=9),
    "attn2_standard_ln": ModelConfig(n_layers=2, d_model=16, n_heads=3, d_head=5, d_vocab=23, n_ctx=9,
                                     positional_embedding_type="standard", normalization_type="LN"),
    "gelu1_ln": ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=4, d_mlp=32, d_vocab=23, n_ctx=9,
                            positional_embedding_type="standard", normalization_type="LN"),
    "gelu2_shortformer_new": ModelConfig(n_layers=2, d_model=12, n_heads=2, d_head=3, d_mlp=20, d_vocab=17,
                                         n_ctx=7, act_fn="gelu_new"),
}


def loop_forward(model: HookedTinyTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Logits for one sequence, written as the textbook equations with explicit loops."""
    cfg = model.cfg
    sd = {k: v.double() for k, v in model.state_dict().items()}

    def layer_norm(x, w, b):
        mu = sum(x) / len(x)
        var = sum((xi - mu) ** 2 for xi in x) / len(x)
        return torch.stack([(x[i] - mu) / math.sqrt(var + cfg.layer_norm_eps) * w[i] + b[i] for i in range(len(x))])

    def gelu(x):
        if cfg.act_fn == "gelu":
            return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    n = len(tokens)
    resid = [sd["embed.W_E"][t].clone() for t in tokens]
    pos = [sd["pos_embed.W_pos"][i] for i in range(n)]
    if cfg.positional_embedding_type == "standard":
        resid = [r + p for r, p in zip(resid, pos)]
    for layer in range(cfg.n_layers):
        pre = f"blocks.{layer}."
        normed = [layer_norm(r, sd[pre + "ln1.w"], sd[pre + "ln1.b"]) if cfg.normalization_type else r
                  for r in resid]
        qk_in = [x + p for x, p in zip(normed, pos)] if cfg.positional_embedding_type == "shortformer" else normed
        attn_out = [sd[pre + "attn.b_O"].clone() for _ in range(n)]
        for h in range(cfg.n_heads):
            W_Q, W_K, W_V, W_O = (sd[pre + f"attn.W_{m}"][h] for m in "QKVO")
            b_Q, b_K, b_V = (sd[pre + f"attn.b_{m}"][h] for m in "QKV")
            for i in range(n):
                q = qk_in[i] @ W_Q + b_Q
                scores = [float((q * (qk_in[j] @ W_K + b_K)).sum()) / math.sqrt(cfg.d_head) for j in range(i + 1)]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                z = sum((w / total) * (normed[j] @ W_V + b_V) for j, w in enumerate(weights))
                attn_out[i] = attn_out[i] + z @ W_O
        resid = [r + a for r, a in zip(resid, attn_out)]
        if not cfg.attn_only:
            for i in range(n):
                x = layer_norm(resid[i], sd[pre + "ln2.w"], sd[pre + "ln2.b"]) if cfg.normalization_type else resid[i]
                hidden = gelu(x @ sd[pre + "mlp.W_in"] + sd[pre + "mlp.b_in"])
                resid[i] = resid[i] + hidden @ sd[pre + "mlp.W_out"] + sd[pre + "mlp.b_out"]
    if cfg.normalization_type:
        resid = [layer_norm(r, sd["ln_final.w"], sd["ln_final.b"]) for r in resid]
    return torch.stack([r @ sd["unembed.W_U"] + sd["unembed.b_U"] for r in resid])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_matches_loop_oracle(name):
    cfg = CONFIGS[name]
    model = randomized(cfg).double()
    tokens = torch.randint(0, cfg.d_vocab, (2, cfg.n_ctx), generator=torch.Generator().manual_seed(1))
    logits = model(tokens)
    for b in range(2):
        torch.testing.assert_close(logits[b], loop_forward(model, tokens[b]), rtol=1e-9, atol=1e-9)


def test_shortformer_keeps_positions_out_of_the_residual_stream():
    cfg = CONFIGS["attn1_shortformer"]
    model = randomized(cfg)
    tokens = torch.randint(0, cfg.d_vocab, (1, 5))
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], model.W_E[tokens])
    # Values see no position: permuting W_pos changes the pattern, never hook_v.
    with torch.no_grad():
        model.pos_embed.W_pos.copy_(model.W_pos.flip(0))
    _, cache_flipped = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["blocks.0.attn.hook_v"], cache_flipped["blocks.0.attn.hook_v"])
    assert not torch.allclose(cache["blocks.0.attn.hook_pattern"], cache_flipped["blocks.0.attn.hook_pattern"])


def test_hook_names_and_cache_shapes():
    cfg = CONFIGS["gelu1_ln"]
    model = randomized(cfg)
    model.set_use_attn_result(True)
    batch, n = 3, 6
    tokens = torch.randint(0, cfg.d_vocab, (batch, n))
    logits, cache = model.run_with_cache(tokens)
    h, d, k, m = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    expected = {
        "hook_embed": (batch, n, d), "hook_pos_embed": (batch, n, d),
        "blocks.0.hook_resid_pre": (batch, n, d), "blocks.0.ln1.hook_scale": (batch, n, 1),
        "blocks.0.ln1.hook_normalized": (batch, n, d),
        "blocks.0.attn.hook_q": (batch, n, h, k), "blocks.0.attn.hook_k": (batch, n, h, k),
        "blocks.0.attn.hook_v": (batch, n, h, k), "blocks.0.attn.hook_attn_scores": (batch, h, n, n),
        "blocks.0.attn.hook_pattern": (batch, h, n, n), "blocks.0.attn.hook_z": (batch, n, h, k),
        "blocks.0.attn.hook_result": (batch, n, h, d), "blocks.0.hook_attn_out": (batch, n, d),
        "blocks.0.hook_resid_mid": (batch, n, d), "blocks.0.ln2.hook_normalized": (batch, n, d),
        "blocks.0.mlp.hook_pre": (batch, n, m), "blocks.0.mlp.hook_post": (batch, n, m),
        "blocks.0.hook_mlp_out": (batch, n, d), "blocks.0.hook_resid_post": (batch, n, d),
        "ln_final.hook_normalized": (batch, n, d),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    pattern = cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(batch, h, n))
    assert (pattern.triu(1) == 0).all(), "attention must be causal"
    # hook_result summed over heads plus b_O is the attention output.
    torch.testing.assert_close(cache["blocks.0.attn.hook_result"].sum(2) + model.b_O[0],
                               cache["blocks.0.hook_attn_out"], rtol=1e-5, atol=1e-5)
    model.set_use_attn_result(False)
    torch.testing.assert_close(model(tokens), logits)


def test_run_with_hooks_can_ablate():
    cfg = CONFIGS["attn1_shortformer"]
    model = randomized(cfg)
    tokens = torch.randint(0, cfg.d_vocab, (1, 6))

    def zero_head_0(z, hook):
        z[:, :, 0] = 0
        return z

    ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head_0)])
    _, cache = model.run_with_cache(tokens)
    expected = (model.W_E[tokens] + torch.einsum("bpk,kd->bpd", cache["blocks.0.attn.hook_z"][:, :, 1],
                                                  model.W_O[0, 1]) + model.b_O[0]) @ model.W_U + model.b_U
    torch.testing.assert_close(ablated, expected, rtol=1e-5, atol=1e-5)
    assert not model.blocks[0].attn.hook_z._forward_hooks, "hooks must be removed afterwards"


def test_factored_circuits_match_dense_products():
    cfg = CONFIGS["attn2_standard_ln"]
    model = randomized(cfg)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            W_Q, W_K, W_V, W_O = (getattr(model, f"W_{m}")[layer, head] for m in "QKVO")
            torch.testing.assert_close(model.QK[layer, head].AB, W_Q @ W_K.T)
            torch.testing.assert_close(model.OV[layer, head].AB, W_V @ W_O)
    assert tuple(model.OV.shape) == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_model)


def test_state_dict_round_trip_and_tl_layout(tmp_path):
    cfg = CONFIGS["gelu1_ln"]
    model = randomized(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["blocks.0.attn.W_Q"] == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert shapes["blocks.0.attn.W_O"] == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert shapes["blocks.0.mlp.W_in"] == (cfg.d_model, cfg.d_mlp)
    assert shapes["embed.W_E"] == (cfg.d_vocab, cfg.d_model)
    assert shapes["unembed.W_U"] == (cfg.d_model, cfg.d_vocab)
    from utils.models import load_model, save_model

    save_model(model, "tiny", out_dir=tmp_path)
    loaded = load_model("tiny", model_dir=tmp_path, device="cpu")
    tokens = torch.randint(0, cfg.d_vocab, (2, 7))
    # fp16 storage: equal to the fp16-rounded weights exactly, to the originals within fp16 error.
    rounded = HookedTinyTransformer(cfg)
    rounded.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    torch.testing.assert_close(loaded(tokens), rounded(tokens))


def test_pretrained_route_reads_a_tl_checkpoint(tmp_path):
    """A folder laid out like Neel Nanda's hub repos: TL-style config.json + *final.pth."""
    import json

    tl_config = {"n_layers": 1, "d_model": 16, "d_mlp": 32, "d_head": 4, "n_heads": 2, "n_ctx": 9,
                 "d_vocab": 23, "act_fn": "gelu", "attn_only": False, "normalization": "LN",
                 "shortformer_pos": False, "tokenizer_name": "NeelNanda/gpt-neox-tokenizer-digits"}
    cfg = config_from_tl_json(tl_config)
    source = randomized(cfg)
    state = dict(source.state_dict())
    state["blocks.0.attn.IGNORE"] = torch.tensor(-1e5)  # buffers TL checkpoints carry
    state["blocks.0.attn.mask"] = torch.ones(9, 9, dtype=torch.bool).tril()
    (tmp_path / "config.json").write_text(json.dumps(tl_config))
    torch.save(state, tmp_path / "GELU_1L_final.pth")
    model = load_pretrained("gelu-1l", local_dir=tmp_path, device="cpu")
    tokens = torch.randint(0, 23, (2, 9))
    torch.testing.assert_close(model(tokens), source(tokens))


def test_attn_only_tl_config_and_lnpre_fill():
    cfg = config_from_tl_json({"n_layers": 2, "d_model": 8, "d_head": 4, "n_heads": 2, "n_ctx": 5,
                               "d_vocab": 11, "d_mlp": -1, "attn_only": True, "act_fn": "solu_ln",
                               "normalization": "LNPre", "shortformer_pos": True})
    assert cfg.attn_only and cfg.positional_embedding_type == "shortformer" and cfg.normalization_type == "LN"
    state = {k: v for k, v in HookedTinyTransformer(cfg).state_dict().items() if ".ln" not in k and "ln_final" not in k}
    filled = state_dict_from_tl(state, cfg)
    assert torch.equal(filled["blocks.1.ln1.w"], torch.ones(8)) and torch.equal(filled["ln_final.b"], torch.zeros(8))


def test_pretrained_route_offline_fails_fast(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(ConnectionError, match=r"load_model\('attn-only-1l'\)"):
        load_pretrained("attn-only-1l")
    # Fails before any network wait; the bound is wide so a busy machine never trips it.
    assert time.time() - start < 10.0
    with pytest.raises(ValueError, match="unknown pretrained"):
        load_pretrained("gpt2")


def test_bad_inputs_raise_clear_errors():
    cfg = CONFIGS["attn1_shortformer"]
    model = HookedTinyTransformer(cfg)
    with pytest.raises(ValueError, match="n_ctx"):
        model(torch.zeros(1, cfg.n_ctx + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[0, cfg.d_vocab]]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="tokenizer"):
        model("hello")
    with pytest.raises(ValueError, match="return_type"):
        model(torch.zeros(1, 3, dtype=torch.long), return_type="probs")
    with pytest.raises(ValueError, match="positional_embedding_type"):
        ModelConfig(positional_embedding_type="rotary")
    with pytest.raises(ValueError, match="attention-only"):
        model.W_in


def test_loss_is_next_token_cross_entropy():
    cfg = CONFIGS["gelu1_ln"]
    model = randomized(cfg)
    tokens = torch.randint(0, cfg.d_vocab, (2, 8))
    logits = model(tokens)
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg.d_vocab), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(model(tokens, return_type="loss"), manual)
    per_token = lm_cross_entropy(logits, tokens, per_token=True)
    assert per_token.shape == (2, 7)


def test_generate_is_seeded_and_greedy_is_argmax():
    cfg = CONFIGS["gelu1_ln"]
    model = randomized(cfg)
    prompt = torch.tensor([[0, 3, 4]])
    a = model.generate(prompt, max_new_tokens=4, seed=5, stop_at_eos=False)
    b = model.generate(prompt, max_new_tokens=4, seed=5, stop_at_eos=False)
    assert torch.equal(a, b) and a.shape == (1, 7)
    greedy = model.generate(prompt, max_new_tokens=1, temperature=0, stop_at_eos=False)
    assert greedy[0, -1] == model(prompt)[0, -1].argmax()


def _tl_native_oracle(model: HookedTinyTransformer):
    """The same weights inside TransformerLens 4.x's native bridge (standard positions only)."""
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge.sources.native")
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    cfg = model.cfg
    tl_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model, n_layers=cfg.n_layers, d_mlp=cfg.d_mlp or 4 * cfg.d_model, d_head=cfg.d_head,
        n_heads=cfg.n_heads, n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab, act_fn=cfg.act_fn, attn_only=cfg.attn_only,
        normalization_type=cfg.normalization_type, positional_embedding_type="standard",
        architecture="TransformerLensNative",
    )
    bridge = bridge_mod.boot(tl_cfg, tokenizer=None, device="cpu", dtype=torch.float32, model_name="oracle")
    converted = convert_tl_checkpoint(dict(model.state_dict()), tl_cfg)
    result = bridge.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return bridge


@pytest.mark.parametrize("name", ["gelu1_ln", "attn2_standard_ln"])
def test_matches_transformer_lens_native_bridge(name):
    model = randomized(CONFIGS[name])
    try:
        bridge = _tl_native_oracle(model)
    except (ImportError, TypeError, AttributeError) as exc:  # API differs across TL versions
        pytest.skip(f"TransformerLens native bridge unavailable: {exc}")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, model.cfg.n_ctx))
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), model(tokens), rtol=1e-4, atol=1e-4)
        _, ours = model.run_with_cache(tokens)
        _, theirs = bridge.run_with_cache(tokens)
    torch.testing.assert_close(theirs["blocks.0.attn.hook_pattern"], ours["blocks.0.attn.hook_pattern"],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_hooked_transformer_3x(name):
    """Runs where transformer-lens 3.x (which still has HookedTransformer) is installed."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        pytest.skip("transformer-lens 4.x has no HookedTransformer")
    cfg = CONFIGS[name]
    model = randomized(cfg)
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
        d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, act_fn=cfg.act_fn, attn_only=cfg.attn_only,
        normalization_type=cfg.normalization_type, positional_embedding_type=cfg.positional_embedding_type,
    )
    reference = HookedTransformer(tl_cfg)
    reference.load_state_dict(dict(model.state_dict()), strict=False)
    tokens = torch.randint(0, cfg.d_vocab, (2, cfg.n_ctx))
    with torch.no_grad():
        torch.testing.assert_close(reference(tokens), model(tokens), rtol=1e-4, atol=1e-4)


def test_loss_path_equals_cross_entropy_of_the_logits_with_the_same_gradients():
    from utils.models.transformer import lm_cross_entropy

    model = HookedTinyTransformer(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_vocab=64, n_ctx=12,
                                              normalization_type="LN"))
    tokens = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(0))
    fast = model(tokens, return_type="loss")
    fast.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = lm_cross_entropy(model(tokens), tokens)
    plain.backward()
    torch.testing.assert_close(fast, plain)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast_grads[name], p.grad, msg=name)
    logits, loss = model(tokens, return_type="both")
    torch.testing.assert_close(loss, plain)


def test_an_in_place_hook_on_the_positional_embedding_leaves_the_weights_alone():
    """hook_pos_embed gets a copy of W_pos's rows (chapter 00's runner zeroes activations in place)."""
    from utils.models import load_model
    from utils.models.hooks import zero_in_place

    model = load_model("attn-only-1l", device="cpu")
    before = model.W_pos.detach().clone()
    with torch.no_grad():
        model.run_with_hooks(torch.randint(0, 4096, (2, 10)), fwd_hooks=[("hook_pos_embed", zero_in_place)])
    assert torch.equal(model.W_pos.detach(), before)


@pytest.mark.parametrize("kind", ["model", "sae", "transcoder"])
def test_every_config_refuses_unknown_keys_by_name(kind):
    """One rule (utils.models.config.config_from_dict) for the model, SAE and transcoder configs:
    a saved config round-trips, and a key that is not a field is named, never dropped."""
    from utils.attribution.transcoder import TranscoderConfig
    from utils.models.config import ModelConfig
    from utils.sae.config import SAEConfig, preset

    cfg = {"model": ModelConfig(), "sae": preset("cpu"), "transcoder": TranscoderConfig(d_in=8, d_out=8, k=2)}[kind]
    data = cfg.to_dict()
    assert type(cfg).from_dict(data) == cfg
    with pytest.raises(ValueError, match=rf"{type(cfg).__name__}: unknown config keys \['d_sea'\]"):
        type(cfg).from_dict({**data, "d_sea": 3})
    assert isinstance(preset("cpu"), SAEConfig)
