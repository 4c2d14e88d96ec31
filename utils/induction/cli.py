"""``python -m utils.induction [MODEL]``: a model's induction numbers on repeated random tokens (loss
drop, induction and previous-token scores per head); ``--gate`` prints (and with ``--record``
stores) the bundled attn-only-2l's gate from ``utils.models.evaluation``.

On a sequence BOS, r_1..r_n, r_1..r_n of uniformly random tokens, nothing predicts the first
half, but a model with induction heads predicts the second half by finding the previous
occurrence of the current token and copying the token that followed it. Two numbers show it:

* the loss drop: mean loss on the second half minus mean loss on the first half (nats);
* the induction score of a head: its mean attention, from each second-half position q, to the key
  position q - (n - 1), the token right after the previous occurrence of the current token.
"""
from __future__ import annotations

import argparse
import json

from utils.models.evaluation import ICL_EARLY, ICL_LATE, gate_failures, gate_report, induction_report, record_gate


def main(argv=None) -> None:
    from utils.models import load_model

    parser = argparse.ArgumentParser(prog="python -m utils.induction", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="attn-only-2l")
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--gate", action="store_true",
                        help="print the bundled 2-layer model's gate (second-copy losses, best heads, held-out "
                             "loss and in-context learning against attn-only-1l); exit 1 if it fails")
    parser.add_argument("--baseline", default="attn-only-1l", help="the model --gate compares against")
    parser.add_argument("--record", action="store_true",
                        help="with --gate: store the result in the model's .train.json and regenerate MODEL_CARD.md")
    args = parser.parse_args(argv)
    model = load_model(args.model, device="cpu")
    if args.gate:
        out = gate_report(model, load_model(args.baseline, device="cpu"))
        print(f"{args.model}: the gate")
        for n, second in out["second_copy"].items():
            print(f"  BOS, r, r at n={n}: second-copy loss {second['mean']:.3f} nats; "
                  f"10-token chunks {second['chunks']}")
        print(f"  layer-0 previous-token scores {out['previous_token_scores_layer0']}")
        print(f"  last-layer induction scores   {out['induction_scores_last_layer']}")
        for name, held in ((args.model, out["held_out"]), (args.baseline, out["baseline_held_out"])):
            print(f"  {name}: held-out loss {held['val_loss']:.3f}, in-context learning "
                  f"(loss at positions {ICL_LATE[0]}-{ICL_LATE[1]} minus {ICL_EARLY[0]}-{ICL_EARLY[1]}) "
                  f"{held['icl_score']:+.3f}")
        failures = gate_failures(out)
        print("  gate: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
        print(json.dumps(out))
        if args.record:
            record_gate(args.model, out, failures)
        raise SystemExit(1 if failures else 0)
    report = induction_report(model, args.seq_len, args.batch)
    print(f"{args.model}: repeated random tokens, seq_len {args.seq_len}, batch {args.batch}")
    print(f"  loss first half {report['loss_first_half']:.3f}, second half {report['loss_second_half']:.3f}, "
          f"drop {report['loss_drop']:.3f} nats")
    for layer, scores in report["layers"].items():
        print(f"  layer {layer} induction scores     {scores['induction_score']}")
        print(f"  layer {layer} previous-token scores {scores['previous_token_score']}")
    print(json.dumps(report))

