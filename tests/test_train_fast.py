"""The fast training step (utils.models.fast_step, ``train(..., fast=True)``) gives the plain step's
losses, gradients and weights: exactly up to rounding in float64, within 1e-5 in float32."""
import copy

import pytest
import torch
import torch.nn.functional as F

from utils.data.dataset import batches
from utils.models import HookedTinyTransformer, ModelConfig
from utils.models.fast_step import fast_loss, unembed_cross_entropy
from utils.models.train import TrainConfig, lr_at, make_optimizer, train, training_step, with_synthetic_rows

SMALL = dict(d_model=32, d_head=8, n_ctx=32)
MODELS = {  # every kind the course trains: positions, LayerNorm, MLP, activation
    "attn-only, shortformer, no LN": ModelConfig(n_layers=1, n_heads=2, **SMALL),
    "attn-only 2 layers, shortformer, LN": ModelConfig(n_layers=2, n_heads=4, normalization_type="LN", **SMALL),
    "MLP, standard positions, LN": ModelConfig(n_layers=2, n_heads=2, d_mlp=64, positional_embedding_type="standard",
                                               normalization_type="LN", **SMALL),
    "MLP gelu_new, standard positions, no LN": ModelConfig(n_layers=1, n_heads=2, d_mlp=64, act_fn="gelu_new",
                                                           positional_embedding_type="standard", **SMALL),
}


def perturbed(cfg: ModelConfig, dtype=torch.float64) -> HookedTinyTransformer:
    """A model with every parameter (biases and LayerNorm too) away from its initial value."""
    model = HookedTinyTransformer(cfg).to(dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.3)
    return model


@pytest.mark.parametrize("kind", MODELS)
def test_fast_loss_gives_the_models_loss_and_gradients(kind):
    model = perturbed(MODELS[kind])
    tokens = torch.randint(0, 4096, (5, 32), generator=torch.Generator().manual_seed(1))
    grads = []
    for loss_fn in (lambda: model(tokens, return_type="loss"), lambda: fast_loss(model, tokens, chunk_rows=37)):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()  # 155 rows in chunks of 37: four full chunks and a partial one
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (fast, fast_grads) = grads
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12)
    assert plain_grads.keys() == fast_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)


def steps(cfg: TrainConfig, fast: bool, dtype) -> tuple[list, HookedTinyTransformer]:
    """``train``'s loop, step by step: the losses and the model after ``cfg.steps`` steps."""
    torch.manual_seed(cfg.seed)
    model = HookedTinyTransformer(cfg.model).to(dtype)
    optim = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    stream, losses = batches("train", cfg.batch_size, cfg.seq_len, generator), []
    for step in range(cfg.steps):
        tokens = with_synthetic_rows(next(stream), step, cfg, generator)
        for group in optim.param_groups:
            group["lr"] = lr_at(step, cfg)
        losses.append(training_step(model, optim, tokens, fast).item())
    return losses, model


@pytest.mark.parametrize("kind", MODELS)
def test_fast_steps_follow_the_plain_steps(kind):
    """Same seed, same batches (synthetic rows in steps 0-3 and 6-7), eight steps of AdamW."""
    cfg = TrainConfig(model=MODELS[kind], steps=8, batch_size=4, seq_len=32, warmup_steps=2, seed=3,
                      synthetic_schedule=((0, 4, 2), (6, 8, 4)), synthetic_period=(3, 9))
    plain_losses, plain = steps(cfg, False, torch.float64)
    fast_losses, fast = steps(cfg, True, torch.float64)
    init = HookedTinyTransformer(cfg.model).to(torch.float64)
    assert max((a - b).abs().max() for a, b in zip(plain.parameters(), init.parameters())) > 0.01  # it trained
    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain_losses), rtol=0, atol=1e-10)
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-9, msg=name)
    # float32: the losses agree to float32 rounding (Adam's normalisation amplifies rounding in
    # weights with near-zero gradients, such as rare tokens' embeddings, so those are compared in float64)
    plain32, _ = steps(cfg, False, torch.float32)
    fast32, _ = steps(cfg, True, torch.float32)
    torch.testing.assert_close(torch.tensor(fast32), torch.tensor(plain32), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_plain_run_resumed_with_fast_ends_where_the_plain_run_does(tmp_path, monkeypatch):
    import utils.models.train as train_module

    cfg = TrainConfig(model=MODELS["attn-only 2 layers, shortformer, LN"], steps=8, batch_size=4, seq_len=32,
                      warmup_steps=2, eval_every=8, seed=3, synthetic_schedule=((0, 3, 2),), synthetic_period=(3, 9))
    calls = []
    monkeypatch.setattr(train_module, "fast_loss", lambda *a: calls.append(1) or fast_loss(*a))
    _, plain_report = train(copy.deepcopy(cfg), progress=False)
    ckpt = tmp_path / "run.pt"
    train(copy.deepcopy(cfg), progress=False, checkpoint=str(ckpt), stop_at=4)
    assert not calls and "fast_step" not in plain_report
    _, fast_report = train(copy.deepcopy(cfg), progress=False, checkpoint=str(ckpt), resume=True, fast=True)
    assert len(calls) == 4 and fast_report["fast_step"] is True  # steps 4-7 took the fast path
    for key in ("train_loss", "val_loss"):
        assert fast_report["history"][-1][key] == pytest.approx(plain_report["history"][-1][key], abs=2e-4)


def test_unembed_cross_entropy_against_f_cross_entropy_including_underflowing_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(16, 300, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(300, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 300, (50,), generator=g)
    for scale in (1.0, 200.0):  # at 200 many targets' probabilities underflow (losses of thousands of nats)
        results = []
        for fn in (lambda: F.cross_entropy(x @ W * scale + b, targets),
                   lambda: unembed_cross_entropy(x * scale, W, b, targets, chunk_rows=7)):
            for t in (x, W, b):
                t.grad = None
            loss = fn()
            loss.backward()
            results.append([loss.detach(), x.grad.clone(), W.grad.clone(), b.grad.clone()])
        assert results[0][0] > (1000 if scale > 1 else 0) and torch.isfinite(results[1][0])
        for want, got in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # no gradients wanted: the same value, none formed
        want = F.cross_entropy(x @ W + b, targets).item()
        assert unembed_cross_entropy(x, W, b, targets).item() == pytest.approx(want, rel=1e-12)


def test_fast_loss_refuses_hooks_and_bad_tokens():
    model = HookedTinyTransformer(MODELS["attn-only, shortformer, no LN"])
    tokens = torch.randint(0, 4096, (2, 16))
    with torch.no_grad():
        assert fast_loss(model, tokens).item() == pytest.approx(model(tokens, return_type="loss").item(), abs=1e-5)
    model.blocks[0].attn.hook_pattern.add_hook(lambda pattern, hook: pattern)
    with pytest.raises(ValueError, match="hooks attached"):
        fast_loss(model, tokens)
    model.reset_hooks()
    assert fast_loss(model, tokens.int()).item() == pytest.approx(fast_loss(model, tokens).item())  # any integer dtype
    for bad in (tokens[0], tokens.float(), torch.zeros(2, 33, dtype=torch.long)):
        with pytest.raises(ValueError, match="tokens must be"):
            fast_loss(model, bad)
    with pytest.raises(ValueError, match="chunk_rows"):
        unembed_cross_entropy(torch.zeros(3, 4), torch.zeros(4, 5), torch.zeros(5), torch.zeros(3, dtype=torch.long),
                              chunk_rows=0)
