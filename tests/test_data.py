"""Tokenizer, bundled corpus and model loading."""
import json
import math
import subprocess
import sys

import pytest
import torch

from utils.data import END_OF_TEXT, analysis_tokens, load_corpus_tokens, load_tokenizer
from utils.data.corpus import Document, pydoc_documents, stdlib_documents
from utils.data.dataset import batches
from utils.paths import ASSETS

SAMPLES = [
    "def f(x):\n    return x ** 2  # square\n",
    "To be, or not to be, that is the question:\n",
    "Unicode survives: café, naïve, 日本語, emoji 🙂, tabs\tand\r\nCRLF",
    "",
    "   leading spaces and trailing   ",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_round_trip(text):
    tok = load_tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert all(0 < i < tok.vocab_size for i in ids)


def test_tokenizer_facts():
    tok = load_tokenizer()
    assert tok.vocab_size == 4096
    assert tok.convert_tokens_to_ids(END_OF_TEXT) == 0 == tok.bos_token_id == tok.eos_token_id
    # Common words and keywords of the corpus are single tokens.
    for word in [" import", " return", " the", " def"]:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word


def test_corpus_tokens_match_the_stats_and_the_tokenizer():
    stats = json.loads((ASSETS / "corpus_stats.json").read_text())
    corpus = load_corpus_tokens()
    for split in ("train", "val"):
        assert len(corpus[split]) == stats[split]["tokens"]
        assert corpus[split].max() < 4096 and corpus[split].min() >= 0
        assert corpus[split][0] == 0  # every document starts with <|endoftext|>
    # Decoding a stretch of validation text gives readable text, not byte soup.
    text = load_tokenizer().decode(corpus["val"][:200].tolist())
    assert sum(c.isalpha() for c in text) > 0.5 * len(text.replace(" ", "").replace("\n", ""))


def test_split_is_by_document_name_and_stable():
    a = Document("cpython/os.py", "code", "x")
    assert a.split == Document("cpython/os.py", "code", "different text").split
    docs = list(pydoc_documents())
    assert docs and all(d.source == "pydoc" for d in docs)
    assert [d.name for d in docs] == sorted(d.name for d in docs)
    code = list(stdlib_documents())
    assert len(code) > 100 and all(d.name.startswith("cpython/") for d in code)
    assert not any("/test/" in d.name for d in code)


def test_analysis_tokens_and_batches():
    rows = analysis_tokens(seq_len=16, n_seqs=5)
    assert rows.shape == (5, 16) and (rows[:, 0] == 0).all()
    assert torch.equal(rows, analysis_tokens(seq_len=16, n_seqs=5))
    val = load_corpus_tokens()["val"]
    assert torch.equal(rows[0, 1:], val[:15]) and torch.equal(rows[1, 1:], val[15:30])
    with pytest.raises(ValueError):
        analysis_tokens(seq_len=1)
    with pytest.raises(ValueError, match="only"):
        analysis_tokens(seq_len=128, n_seqs=10 ** 9)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(next(batches("train", 4, 32, g1)), next(batches("train", 4, 32, g2)))


SHIPPED = [n for n in ("attn-only-1l", "attn-only-2l", "gelu-1l", "gelu-2l")
           if (ASSETS / "models" / f"{n}.safetensors").exists()]


def test_the_one_layer_models_ship():
    assert {"attn-only-1l", "gelu-1l"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.slow
def test_bundled_models_load_and_predict(name):
    from utils.models import load_model

    model = load_model(name, device="cpu")
    assert model.W_E.dtype == torch.float32 and not model.training
    tokens = analysis_tokens(seq_len=64, n_seqs=8)
    loss = model(tokens, return_type="loss").item()
    card = json.loads((ASSETS / "models" / f"{name}.train.json").read_text())
    # Untrained is ln(4096) = 8.32; the bundled models reach 3.1-3.8 nats held out. The bar is loose
    # on purpose: it catches an untrained or corrupted file, the gates elsewhere judge quality.
    assert loss < math.log(model.cfg.d_vocab) - 2.0, f"{name} looks untrained (loss {loss:.2f})"
    held_out_loss = model(analysis_tokens(seq_len=128, n_seqs=256), return_type="loss").item()
    assert abs(card["final_val_loss"] - held_out_loss) < 0.05
    text = model.generate("def main():", max_new_tokens=5, seed=0)
    assert isinstance(text, str) and text.startswith("def main():")


def test_unknown_model_name_is_a_clear_error():
    from utils.models import load_model

    with pytest.raises(ValueError, match="available"):
        load_model("gpt2")


@pytest.mark.slow
def test_load_model_offline_in_a_fresh_process_is_quick():
    """Import plus load inside a fresh interpreter with the hub marked offline. CPU seconds are
    asserted (wall time on a shared 2-core machine measures the neighbours); both are printed.
    The target (under 5 CPU s) is measured by scripts/bench_load.py; the bound here is six times
    that, so only a real regression (a network wait, a retrain on import) fails it."""
    code = ("import time; t = time.time(); c = time.process_time(); from utils.models import load_model; "
            "m = load_model('attn-only-1l'); print(time.time() - t, time.process_time() - c)")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "HOME": "/tmp", "DEMYSTIFY_PROGRESS": "/tmp/demystify-test-progress.json"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)  # warm the file cache
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    wall, cpu = map(float, out.stdout.strip().splitlines()[-1].split())
    print(f"import + load_model: {wall:.2f} s wall, {cpu:.2f} s CPU")
    assert cpu < 30.0, f"import + load_model took {cpu:.1f} CPU seconds ({wall:.1f} s wall)"


@pytest.mark.skipif("attn-only-2l" not in SHIPPED, reason="attn-only-2l is not bundled yet")
@pytest.mark.slow
def test_two_layer_model_passes_the_induction_gate():
    """Issue 21's bar, as `python -m utils.induction --gate` prints it: the second copy of BOS, r, r
    (r uniform over the vocabulary) predicted at n = 63 and 50 (mean < 1.5 nats, every 10-token
    chunk < 2.5), a layer-0 previous-token head >= 0.4, a layer-1 induction head >= 0.5, and a
    better language model with more in-context learning than attn-only-1l."""
    from utils.induction import gate_failures, gate_report
    from utils.models import load_model

    report = gate_report(load_model("attn-only-2l", device="cpu"), baseline=load_model("attn-only-1l", device="cpu"))
    assert gate_failures(report) == [], report


@pytest.mark.skipif("attn-only-2l" not in SHIPPED, reason="attn-only-2l is not bundled yet")
def test_two_layer_models_trajectory_ships_beside_its_weights():
    """Every eval of the whole run (resumed segments included): the loss, the in-context-learning
    score, the second-copy loss and the best head scores, and the recorded gate says PASS."""
    from utils.models.train import PRESETS

    card = json.loads((ASSETS / "models" / "attn-only-2l.train.json").read_text())
    cfg = PRESETS["attn-only-2l"]
    steps = [p["step"] for p in card["history"]]
    assert steps == list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every))
    for point in card["history"]:
        assert {"val_loss", "icl_score", "second_copy_loss", "best_previous_token_score",
                "best_induction_score"} <= point.keys(), point
    assert card["history"][-1]["val_loss"] == card["final_val_loss"]
    assert card["gate"]["passed"] and card["gate"]["failures"] == [], card["gate"]


def test_the_gate_is_recorded_beside_the_weights_and_in_the_model_card(tmp_path, monkeypatch):
    import json
    import shutil

    from utils import induction
    from utils.models import loading

    shutil.copytree(loading.MODEL_DIR, tmp_path / "models")
    monkeypatch.setattr(loading, "MODEL_DIR", tmp_path / "models")
    out = {"second_copy": {63: {"mean": 0.93, "chunks": [1.0, 1.46]}, 50: {"mean": 0.9, "chunks": [1.17]}},
           "previous_token_scores_layer0": [0.1, 0.99], "induction_scores_last_layer": [0.93, 0.2],
           "held_out": {"val_loss": 3.25, "icl_score": -0.67},
           "baseline_held_out": {"val_loss": 3.54, "icl_score": -0.32}}
    induction.record_gate("attn-only-2l", out, [])
    gate = json.loads((tmp_path / "models" / "attn-only-2l.train.json").read_text())["gate"]
    assert gate["passed"] and gate["second_copy"]["63"]["mean"] == 0.93
    card = (tmp_path / "models" / "MODEL_CARD.md").read_text()
    assert ("| induction gate | PASS: second-copy loss on BOS, r, r n=63: 0.93 nats (worst 10-token chunk 1.46); "
            "n=50: 0.90 nats") in card and "(attn-only-1l: 3.540, -0.320)" in card
    induction.record_gate("attn-only-2l", out, ["a chunk too high"])
    assert "| induction gate | FAIL (a chunk too high)" in (tmp_path / "models" / "MODEL_CARD.md").read_text()
    assert (loading.MODEL_DIR / "attn-only-2l.train.json").parent == tmp_path / "models"


def test_the_gate_names_every_unmet_condition():
    from utils.induction import gate_failures

    failing = {"second_copy": {63: {"mean": 2.0, "chunks": [1.0, 3.0]}, 50: {"mean": 1.0, "chunks": [1.0]}},
               "previous_token_scores_layer0": [0.1, 0.3], "induction_scores_last_layer": [0.2],
               "held_out": {"val_loss": 3.6, "icl_score": -0.2},
               "baseline_held_out": {"val_loss": 3.54, "icl_score": -0.3}}
    words = " | ".join(gate_failures(failing))
    for needle in ("n=63 is 2.0", "chunk at n=63 has loss 3.0", "previous-token score 0.3", "induction score 0.2",
                   "not below the baseline's 3.54", "not more negative than the baseline's -0.3"):
        assert needle in words, (needle, words)
    assert "n=50" not in words
