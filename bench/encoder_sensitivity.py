"""Where the quality of a 2x FFN pruning of all-MiniLM-L6-v2 goes, layer by layer.

    PYTHONPATH=python python bench/encoder_sensitivity.py --kept 384 768 1152

For each transformer layer alone, its FFN pair is pruned to each ``--kept`` width (the
calibrated fit of ``bench/pretrained_encoder.py``: keep the units with the largest
‖W2[:, j]‖²·C_jj, refit W2 by least squares under the hidden Gram), every other layer left
intact, and the damage ``1 − mean cosine`` of the sentence embeddings to the original's is
measured. Then all layers are pruned at once to the middle width, to compare with the sum of
the single-layer damages (are they additive?).

What it answers: whether a non-uniform split of the same parameter budget over the layers
could beat the uniform one (only if the layers' damage curves differ), and how far each
layer's share is from what a given total damage allows (the total of six layers must stay
under 0.01 for a mean cosine of 0.99).

The damage is measured on every fourth calibration sentence (this is a diagnostic of the
fit, so it stays on calibration text; the held-apart evaluation text is not used).
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Optional

import torch

import pretrained_encoder as pe


def damage(st, model, sents, ref) -> float:
    return 1.0 - pe.quality(ref, pe.embed(st, model, sents))["mean_cos"]


def pruned(original, grams, pairs, kept: int):
    """A copy of ``original`` with the FFN pairs in ``pairs`` pruned to ``kept`` units."""
    model = copy.deepcopy(original)
    hidden = model.get_submodule(pairs[0][0]).out_features
    pe.compress_ffn(model, grams, pairs, hidden / kept, "prune")
    return model


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kept", type=int, nargs="+", default=[384, 768, 1152],
                    help="hidden widths to try per layer (of 1536)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    st = pe.load_encoder()
    original = st[0].auto_model.eval()
    cal, _ = pe.split_sentences()
    pairs = pe.ffn_pairs(original)
    grams = pe.input_grams(st, original, cal, [n2 for _, n2 in pairs])
    sub = cal[::4]
    ref = pe.embed(st, original, sub)
    widths = sorted(args.kept)
    table = {}
    for li, pair in enumerate(pairs):
        table[li] = [damage(st, pruned(original, grams, [pair], k), sub, ref)
                     for k in widths]
        print(f"layer {li}: " + ", ".join(f"kept {k}: {d:.5f}" for k, d in zip(widths, table[li])),
              file=sys.stderr, flush=True)
    mid = widths[len(widths) // 2]
    all_mid = damage(st, pruned(original, grams, pairs, mid), sub, ref)
    cmd = "python bench/encoder_sensitivity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"`{cmd}`\n")
    print("| layer | " + " | ".join(f"kept {k}" for k in widths) + " |")
    print("|--:|" + "--:|" * len(widths))
    for li, row in table.items():
        print(f"| {li} | " + " | ".join(f"{d:.4f}" for d in row) + " |")
    j = widths.index(mid)
    print(f"\nsum of single-layer damages at kept {mid}: {sum(r[j] for r in table.values()):.4f}; "
          f"all {len(pairs)} layers pruned together: {all_mid:.4f} "
          f"(1 - mean cosine on {len(sub)} calibration sentences)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
