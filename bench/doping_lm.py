"""The Doping paper's language-modelling experiment (Thakker et al., arXiv 2102.07071), at a
scale a 2-core CPU trains in minutes: a word-level 2-layer LSTM language model, dense, and
with its LSTM layers compressed ~10x and ~25x by doped Kronecker products (annealed, with and
without co-matrix dropout), plain Kronecker products, low rank (LMF), magnitude pruning and a
smaller dense LSTM, each at the same number of stored LSTM parameters.

    PYTHONPATH=python python bench/doping_lm.py --jobs 2 --save-dir models \\
        --methods dense dopedkp dopedkp_nocmr kp lmf prune small dopedkp_dec
    PYTHONPATH=python python bench/doping_lm.py --text my_corpus.txt ...   # any corpus
    PYTHONPATH=python python bench/doping_lm.py --write-text wiki.txt       # the default one

Corpus (default): the 103 English Wikipedia articles of the sample dump that gensim ships
in its test data (``enwiki-latest-pages-articles1.xml-...-shortened.bz2``, gensim >= 4, the
``bench`` extra; read from the installed package, nothing downloaded), markup stripped by
gensim's own ``filter_wiki``, headings, lists and table debris dropped: 2.6 M characters
of prose, 0.43 M tokens. Encyclopaedic prose is what WikiText is made of, the closest
shipped relative of the paper's PTB (news text); a 5000-word vocabulary (the default
``--vocab``) keeps the output layer trainable here (the corpus is a third of PTB's size).
``--text FILE`` takes any UTF-8 file whose documents are separated by blank lines.

Pipeline (PTB's conventions): lowercase, numbers become ``N``, punctuation dropped,
``<eos>`` after every sentence, the ``--vocab`` most frequent training words kept (the rest
``<unk>``). Documents are shuffled with a fixed seed and split whole into test (first 10%
of the words), valid (next 10%) and train (the rest), so no article leaks across splits.

Model: embedding (E) -> dropout -> 2-layer LSTM (H) -> dropout -> decoder tied to the
embedding (E = H), as in the medium PTB models; dropout also between the LSTM layers. All
variants share everything but the LSTM (and, for ``dopedkp_dec``, the decoder), train with
the same recipe (Adam, warm-up then cosine decay over ``--steps`` steps of truncated BPTT,
gradient clipping), and are scored on the whole test split.

Stored LSTM parameters (the budget every compressed variant meets, ``stored_params``):
every value stored (Kronecker factors, S's or the pruned matrix's non-zeros, low-rank
factors, biases b_ih and b_hh as torch.nn.LSTM keeps them) plus, for each sparse matrix,
its CSR indices at half a value each (16-bit column indices and row pointers: every gate
matrix here has fewer than 65536 columns and non-zeros): ``values + (nnz + rows + 1) / 2``.
The Doping paper does not spell out its index accounting; this rule charges sparse
storage (doping and pruning alike) for what a kernel must read, so the sparse methods are
not flattered. ``values_only`` in the results drops the indices for comparison.

Methods (``--methods``), at each ``--factors`` value F (budget = dense LSTM stored / F):
    dense        torch.nn.LSTM, H hidden (the baseline; no F)
    dopedkp      lpfast.torch.DopedLSTM, rank-1 Kronecker + S annealed from density
                 ``--s-initial`` to the budget's, co-matrix dropout ``--cmr`` while annealing
    dopedkp_nocmr  the same, cmr 0 (the paper's co-matrix adaptation finding)
    kp           DopedLSTM without S (density 0), Kronecker rank raised to fill the budget
    lmf          each gate matrix W = U V, rank filling the budget
    prune        dense LSTM pruned by magnitude to the budget's density along the same
                 annealing schedule (mask kept, pruned weights stay zero)
    small        dense nn.LSTM with fewer hidden units, plus a bias-free projection back to
                 E for the tied decoder (counted in its budget)
    dopedkp_dec  dopedkp, and the decoder too a doped Kronecker layer (untied) compressed
                 F-fold the same way: the output layer's perplexity cost (issue 19 item 4)

``--latency`` times the trained dense and doped models and the paper's size (see
``latency_main``).
"""

from __future__ import annotations

import argparse
import bz2
import collections
import importlib.util
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "doping_lm.json"
GENSIM_WIKI = ("test", "test_data",
               "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
METHODS = ("dense", "dopedkp", "dopedkp_nocmr", "kp", "lmf", "prune", "small", "dopedkp_dec")
# The paper's figures (PTB, 2-layer LSTM LM with 25 MB of LSTM weights; perplexity change
# against the dense model at 25x compression of the LSTM layers).
PAPER_25X = {"dopedkp": 1.4, "prune": 7.9, "hmd": 15.0, "lmf": 27.0}


# -- corpus ------------------------------------------------------------------------------------
def gensim_wiki_text() -> str:
    """The default corpus: gensim's shipped Wikipedia sample as plain text, one article per
    blank-line-separated document, one paragraph per line."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        msg = ("the default corpus is the Wikipedia sample in gensim's test data: install gensim "
               "(pip install 'lpfast[bench]') or pass --text FILE")
        raise SystemExit(msg)
    path = Path(spec.submodule_search_locations[0]).joinpath(*GENSIM_WIKI)
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    docs = []
    with bz2.open(path) as fh:
        for _title, text, _pageid in extract_pages(fh, filter_namespaces=("0",)):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            paragraphs = []
            for line in filter_wiki(text).splitlines():
                line = line.strip().replace("'''", "").replace("''", "")
                # Headings (==...==), lists, tables and infobox debris: not running prose.
                if not line or line[0] in "=*#|{}!:;" or len(line.split()) < 8:
                    continue
                paragraphs.append(" ".join(line.split()))
            if paragraphs:
                docs.append("\n".join(paragraphs))
    return "\n\n".join(docs) + "\n"


def read_documents(text: str) -> list[str]:
    """Documents of ``text``: blocks separated by one or more blank lines."""
    return [d.strip() for d in re.split(r"\n[ \t]*\n", text) if d.strip()]


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*|[0-9]+(?:[.,:/][0-9]+)*")


def tokenize(document: str) -> list[str]:
    """PTB-style tokens: lowercase words, numbers as ``N``, ``<eos>`` after each sentence."""
    out: list[str] = []
    for line in document.lower().splitlines():
        for sentence in _SENTENCE_END.split(line):
            words = ["N" if w[0].isdigit() else w for w in _WORD.findall(sentence)]
            if words:
                out += words
                out.append("<eos>")
    return out


def split_corpus(docs: list[list[str]], seed: int = 0, held_out: float = 0.1
                 ) -> tuple[list[str], list[str], list[str]]:
    """(train, valid, test) token streams; whole documents, shuffled with ``seed``, test and
    valid each taking documents until they hold ``held_out`` of the words."""
    order = np.random.default_rng(seed).permutation(len(docs))
    total = sum(len(d) for d in docs)
    parts: list[list[str]] = [[], [], []]  # test, valid, train
    k = 0
    for i in order:
        if k < 2 and len(parts[k]) >= held_out * total:
            k += 1
        parts[k] += docs[i]
    test, valid, train = parts
    if not train or not valid or not test:
        msg = f"the corpus has too few documents ({len(docs)}) for a train/valid/test split"
        raise SystemExit(msg)
    return train, valid, test


def build_vocab(train: list[str], size: int) -> list[str]:
    """``<unk>``, ``<eos>`` and the ``size - 2`` most frequent other training words (ties by
    first appearance: deterministic)."""
    counts = collections.Counter(w for w in train if w != "<eos>")
    words = [w for w, _ in counts.most_common(max(size - 2, 0))]
    return ["<unk>", "<eos>", *words]


def encode(tokens: list[str], index: dict[str, int]) -> np.ndarray:
    return np.fromiter((index.get(t, 0) for t in tokens), dtype=np.int64, count=len(tokens))


def load_data(text: Optional[str], vocab: int, seed: int, max_words: Optional[int] = None
              ) -> dict[str, Any]:
    source = "gensim enwiki sample (filter_wiki)" if text is None else str(text)
    raw = gensim_wiki_text() if text is None else Path(text).read_text(encoding="utf-8")
    docs = [tokenize(d) for d in read_documents(raw)]
    docs = [d for d in docs if d]
    if max_words:  # every document shortened alike, so the split still has documents
        docs = [d[: max(max_words // len(docs), 1)] for d in docs]
    train, valid, test = split_corpus(docs, seed)
    words = build_vocab(train, vocab)
    index = {w: i for i, w in enumerate(words)}
    ids = {k: encode(v, index) for k, v in (("train", train), ("valid", valid), ("test", test))}
    unk = {k: float((v == 0).mean()) for k, v in ids.items()}
    info = {"source": source, "characters": len(raw), "documents": len(docs),
            "vocab": len(words), "tokens": {k: int(v.size) for k, v in ids.items()},
            "unk_rate": unk}
    return {"ids": ids, "info": info}


def batchify(ids: np.ndarray, batch: int) -> Tensor:
    """(T, batch) columns of the stream cut into ``batch`` contiguous pieces."""
    n = ids.size // batch
    return torch.from_numpy(ids[: n * batch].reshape(batch, n).T.copy())


# -- LSTM variants -----------------------------------------------------------------------------
def gate_shapes(E: int, H: int, layers: int) -> list[tuple[str, tuple[int, int]]]:
    """(name, (rows, cols)) of every gate matrix in torch's order ih0, hh0, ih1, ..."""
    return [(f"{k}{l}", (4 * H, E if (k == "ih" and l == 0) else H))
            for l in range(layers) for k in ("ih", "hh")]


class FormedLSTM(nn.Module):
    """A multi-layer LSTM whose gate matrices are formed by :meth:`weight` once per forward
    and run in torch's fused LSTM (what DopedLSTM does), so every structured baseline trains
    with the same kernel as the dense one. Subclasses define ``weight(name)``."""

    def __init__(self, E: int, H: int, layers: int, dropout: float):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = E, H, layers
        self.dropout = dropout
        k = 1.0 / math.sqrt(H)
        self.biases = nn.ParameterDict({
            f"{kind}{l}": nn.Parameter(torch.empty(4 * H).uniform_(-k, k))
            for l in range(layers) for kind in ("ih", "hh")})

    def weight(self, name: str) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None):
        if hx is None:
            z = x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)
            hx = (z, z)
        flat = []
        for l in range(self.num_layers):
            flat += [self.weight(f"ih{l}"), self.weight(f"hh{l}"), self.biases[f"ih{l}"],
                     self.biases[f"hh{l}"]]
        out, h, c = torch.lstm(x, hx, flat, True, self.num_layers, self.dropout,
                               self.training, False, False)
        return out, (h, c)


class LowRankLSTM(FormedLSTM):
    """LMF: each gate matrix W = U V, U (4H, r), V (r, cols)."""

    def __init__(self, E: int, H: int, layers: int, dropout: float, rank: int):
        super().__init__(E, H, layers, dropout)
        # U V gets nn.LSTM's weight variance k^2 / 3 (k = 1/sqrt(H)): Var(u) = Var(v) = k/sqrt(3r).
        b = (3.0 / (H * rank)) ** 0.25
        self.rank = rank
        self.U = nn.ParameterDict({n: nn.Parameter(torch.empty(s[0], rank).uniform_(-b, b))
                                   for n, s in gate_shapes(E, H, layers)})
        self.V = nn.ParameterDict({n: nn.Parameter(torch.empty(rank, s[1]).uniform_(-b, b))
                                   for n, s in gate_shapes(E, H, layers)})

    def weight(self, name: str) -> Tensor:
        return self.U[name] @ self.V[name]


class PrunedLSTM(FormedLSTM):
    """Magnitude pruning: dense gate matrices times a 0/1 mask; ``prune_(density)`` keeps each
    matrix's largest-magnitude weights (the doped-layer protocol, so SparsityAnnealer drives
    it on the same schedule as the doped models)."""

    def __init__(self, E: int, H: int, layers: int, dropout: float):
        super().__init__(E, H, layers, dropout)
        k = 1.0 / math.sqrt(H)
        self.W = nn.ParameterDict({n: nn.Parameter(torch.empty(*s).uniform_(-k, k))
                                   for n, s in gate_shapes(E, H, layers)})
        for n, s in gate_shapes(E, H, layers):
            self.register_buffer(f"mask_{n}", torch.ones(*s))

    def weight(self, name: str) -> Tensor:
        return self.W[name] * getattr(self, f"mask_{name}")

    @torch.no_grad()
    def prune_(self, density: float) -> int:
        total = 0
        for name, w in self.W.items():
            mask = getattr(self, f"mask_{name}")
            keep = int(round(density * w.numel()))
            if keep < int(mask.sum()):
                score = (w * mask).abs().reshape(-1)
                new = torch.zeros_like(score)
                if keep:
                    new[torch.topk(score, keep, sorted=False).indices] = 1
                mask.copy_(new.view_as(mask))
                w.mul_(mask)
            total += int(mask.sum())
        return total

    def compact_(self) -> PrunedLSTM:
        return self  # the mask is the structure: nothing to drop in a dense training layout

    @property
    def nnz(self) -> int:
        return sum(int(getattr(self, f"mask_{n}").sum()) for n in self.W)


class SmallLSTM(nn.Module):
    """A dense nn.LSTM with ``hidden`` units and a bias-free projection to E (for the tied
    decoder)."""

    def __init__(self, E: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(E, hidden, layers, dropout=dropout)
        self.proj = nn.Linear(hidden, E, bias=False)

    def forward(self, x: Tensor, hx=None):
        out, state = self.lstm(x, hx)
        return self.proj(out), state


def lstm_storage(rnn: nn.Module) -> dict[str, int]:
    """Stored values and sparse indices of an LSTM variant (module docstring's rule)."""
    from lpfast.torch import DopedLSTM

    values = indices = 0
    if isinstance(rnn, DopedLSTM):
        for _, m in rnn.matrices():
            values += m.n_params
            if m.nnz:
                indices += m.nnz + m.out_features + 1
    elif isinstance(rnn, PrunedLSTM):
        values = sum(p.numel() for p in rnn.biases.values())
        for name, w in rnn.W.items():
            nnz = int(getattr(rnn, f"mask_{name}").sum())
            values += nnz
            indices += nnz + w.shape[0] + 1
    else:
        values = sum(p.numel() for p in rnn.parameters())
    return {"values": int(values), "indices": int(indices),
            "stored": int(values + (indices + 1) // 2)}


def doped_decoder_storage(dec: nn.Module) -> dict[str, int]:
    idx = dec.nnz + dec.out_features + 1 if dec.nnz else 0
    return {"values": int(dec.n_params), "indices": int(idx),
            "stored": int(dec.n_params + (idx + 1) // 2)}


# -- budgets -----------------------------------------------------------------------------------
def dense_stored(E: int, H: int, layers: int) -> int:
    return sum(r * c + r for _, (r, c) in gate_shapes(E, H, layers))  # W and its b_ih or b_hh


def kp_shapes(rows: int, cols: int) -> tuple[tuple[int, int], tuple[int, int]]:
    from lpfast import kron_factor_shapes

    return tuple(kron_factor_shapes(rows, cols)[0])


def sparse_density(budget: float, fixed: float, shapes: list[tuple[int, int]]) -> float:
    """Density d (same for every matrix) with fixed + sum(1.5 d r c + (r + 1) / 2) <= budget."""
    # One entry per matrix of slack: each matrix rounds its own count of non-zeros.
    room = budget - fixed - sum((r + 1) / 2 + 1.5 for r, _ in shapes)
    return float(min(max(room / (1.5 * sum(r * c for r, c in shapes)), 0.0), 1.0))


def plan(method: str, factor: float, E: int, H: int, layers: int, vocab: int
         ) -> dict[str, Any]:
    """The structural choice of ``method`` that fills budget = dense / factor (not above)."""
    shapes = [s for _, s in gate_shapes(E, H, layers)]
    biases = sum(r for r, _ in shapes)
    budget = dense_stored(E, H, layers) / factor
    kp1 = 0
    for r, c in shapes:
        (m1, n1), (m2, n2) = kp_shapes(r, c)
        kp1 += m1 * n1 + m2 * n2
    if method in ("dopedkp", "dopedkp_nocmr", "dopedkp_dec"):
        p = {"rank": 1, "density": sparse_density(budget, biases + kp1, shapes)}
        if method == "dopedkp_dec":
            (m1, n1), (m2, n2) = kp_shapes(vocab, E)
            dec_budget = (vocab * E + vocab) / factor
            p["dec_density"] = sparse_density(dec_budget, m1 * n1 + m2 * n2 + vocab,
                                              [(vocab, E)])
        return p
    if method == "kp":
        return {"rank": max(int((budget - biases) // kp1), 1)}
    if method == "lmf":
        per_rank = sum(r + c for r, c in shapes)
        return {"rank": max(int((budget - biases) // per_rank), 1)}
    if method == "prune":
        return {"density": sparse_density(budget, biases, shapes)}
    if method == "small":
        h = H
        while h > 1:
            lstm = sum(4 * h * (c + h) + 8 * h for c in [E] + [h] * (layers - 1))
            if lstm + h * E <= budget:
                break
            h -= 1
        return {"hidden": h}
    return {}


# -- model ----------------------------------------------------------------------------------------
class LM(nn.Module):
    """Embedding -> dropout -> rnn -> dropout -> decoder (tied to the embedding unless one
    is given)."""

    def __init__(self, vocab: int, E: int, rnn: nn.Module, dropout: float,
                 decoder: Optional[nn.Module] = None):
        super().__init__()
        self.emb = nn.Embedding(vocab, E)
        nn.init.uniform_(self.emb.weight, -0.1, 0.1)
        self.rnn, self.drop, self.decoder = rnn, nn.Dropout(dropout), decoder
        self.dec_bias = nn.Parameter(torch.zeros(vocab)) if decoder is None else None

    def forward(self, x: Tensor, state=None):
        out, state = self.rnn(self.drop(self.emb(x)), state)
        out = self.drop(out)
        if self.decoder is None:
            logits = F.linear(out, self.emb.weight, self.dec_bias)
        elif self.training:
            # The doped decoder's W formed densely, then one GEMM, as DopedLSTM does: at
            # the start of annealing S holds half of W, where the sparse kernel is ~10x
            # slower than the dense product for a batch of 700 rows.
            logits = F.linear(out, self.decoder.effective_weight(), self.decoder.bias)
        else:
            logits = self.decoder(out)
        return logits, state


def build(method: str, factor: float, args: argparse.Namespace, vocab: int
          ) -> tuple[LM, dict[str, Any]]:
    from lpfast.torch import DopedKroneckerLinear, DopedLSTM

    E = H = args.hidden
    L, p = args.layers, args.dropout
    cfg = plan(method, factor, E, H, L, vocab)
    decoder = None
    if method == "dense":
        rnn = nn.LSTM(E, H, L, dropout=p)
    elif method == "small":
        rnn = SmallLSTM(E, cfg["hidden"], L, p)
    elif method == "lmf":
        rnn = LowRankLSTM(E, H, L, p, cfg["rank"])
    elif method == "prune":
        rnn = PrunedLSTM(E, H, L, p)
    elif method == "kp":
        rnn = DopedLSTM(E, H, L, dropout=p, rank=cfg["rank"], density=0.0)
    else:
        cmr = 0.0 if method == "dopedkp_nocmr" else args.cmr
        initial = max(args.s_initial, cfg["density"])
        rnn = DopedLSTM(E, H, L, dropout=p, rank=1, density=initial, cmr=cmr)
        if method == "dopedkp_dec":
            a, b = kp_shapes(vocab, E)
            decoder = DopedKroneckerLinear(E, vocab, a, b, max(args.s_initial, cfg["dec_density"]),
                                           cmr=cmr)
    return LM(vocab, E, rnn, p, decoder), cfg


# -- training ---------------------------------------------------------------------------------
def evaluate(model: LM, data: Tensor, bptt: int) -> float:
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for i in range(0, data.shape[0] - 1, bptt):
            x, y = data[i:i + bptt], data[i + 1:i + 1 + bptt]
            x = x[: y.shape[0]]
            logits, state = model(x, state)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                           reduction="sum"))
            count += y.numel()
    return math.exp(total / count)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train and score one (method, factor); runs in its own process under ``--jobs``."""
    from lpfast.torch import DensitySchedule, SparsityAnnealer

    args = argparse.Namespace(**job["args"])
    torch.set_num_threads(args.threads)
    method, factor = job["method"], job["factor"]
    torch.manual_seed(args.seed)
    data = job["data"]
    vocab = data["info"]["vocab"]
    train = batchify(data["ids"]["train"], args.batch)
    valid, test = (batchify(data["ids"][k], args.eval_batch) for k in ("valid", "test"))
    model, cfg = build(method, factor, args, vocab)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    steps = args.steps
    annealer = None
    start, end = int(args.anneal_start * steps), max(int(args.anneal_end * steps), 1)
    if method in ("prune", "dopedkp", "dopedkp_nocmr", "dopedkp_dec"):
        # One schedule per doped layer (the decoder's target differs from the LSTM's).
        annealers = []
        init = 1.0 if method == "prune" else args.s_initial
        targets = [(model.rnn, cfg["density"])]
        if model.decoder is not None:
            targets.append((model.decoder, cfg["dec_density"]))
        for layer, target in targets:
            sched = DensitySchedule(max(init, target), target, start, max(end, start + 1))
            annealers.append(SparsityAnnealer([layer], sched, every=args.prune_every))
        annealer = annealers
    per_epoch = (train.shape[0] - 1) // args.bptt
    t0 = time.perf_counter()
    state, done, truncated, losses = None, 0, False, []
    for step in range(steps):
        pos = (step % per_epoch) * args.bptt
        if pos == 0:
            state = None
        x, y = train[pos:pos + args.bptt], train[pos + 1:pos + 1 + args.bptt]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args.lr, args.warmup)
        model.train()
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        losses.append(loss.item())
        if annealer:
            for a in annealer:
                a.step()
            if step + 1 == end:  # CMR regularises the annealing only (the paper's use)
                for m in model.modules():
                    if hasattr(m, "cmr"):
                        m.cmr = 0.0
        done = step + 1
        if args.progress and done % args.progress == 0:
            print(f"  {method} {factor:g}x step {done}/{steps}: loss {np.mean(losses[-50:]):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if time.perf_counter() - t0 > 60 * args.minutes:
            truncated = done < steps
            break
    train_seconds = time.perf_counter() - t0
    if annealer:
        for a in annealer:
            a.finalize()
    t1 = time.perf_counter()
    val_ppl, test_ppl = evaluate(model, valid, args.bptt), evaluate(model, test, args.bptt)
    storage = lstm_storage(model.rnn)
    row = {"method": method, "factor": factor, "config": cfg, "steps": done,
           "planned_steps": steps, "truncated": truncated, "epochs": done / per_epoch,
           "train_seconds": round(train_seconds, 1),
           "ms_per_step": round(1000 * train_seconds / max(done, 1), 1),
           "eval_seconds": round(time.perf_counter() - t1, 1),
           "final_train_loss": float(np.mean(losses[-50:])),
           "valid_ppl": val_ppl, "test_ppl": test_ppl, "lstm": storage,
           "dense_lstm_stored": dense_stored(args.hidden, args.hidden, args.layers)}
    if model.decoder is not None:
        row["decoder"] = doped_decoder_storage(model.decoder)
    if args.save_dir:
        path = Path(args.save_dir) / f"{method}_{factor:g}x.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "method": method, "factor": factor,
                    "args": job["args"], "vocab": vocab}, path)
        row["checkpoint"] = str(path)
    return row


# -- reporting --------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per model, the change of test perplexity against the dense model,
    and the paper's figure beside it where it has one (25x, PTB)."""
    dense = next((r for r in rows if r["method"] == "dense"), None)
    lines = ["| method | LSTM target | stored LSTM params | compression | test ppl | vs dense | "
             "paper at 25x (PTB) | valid ppl | train s | steps |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        comp = r["dense_lstm_stored"] / r["lstm"]["stored"]
        delta = "" if dense is None else f"{100 * (r['test_ppl'] / dense['test_ppl'] - 1):+.1f}%"
        target = "-" if r["method"] == "dense" else f"{r['factor']:g}x"
        paper = PAPER_25X.get(r["method"]) if r["factor"] == 25 else None
        steps = f"{r['steps']}" + (" (cut)" if r["truncated"] else "")
        lines.append(f"| {r['method']} | {target} | {r['lstm']['stored']:,} | {comp:.1f}x | "
                     f"{r['test_ppl']:.1f} | {delta} | {'' if paper is None else f'+{paper}%'} | "
                     f"{r['valid_ppl']:.1f} | {r['train_seconds']:.0f} | {steps} |")
    return "\n".join(lines)


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", help="UTF-8 corpus, documents separated by blank lines "
                    "(default: gensim's shipped Wikipedia sample)")
    ap.add_argument("--write-text", metavar="FILE", help="write the default corpus and exit")
    ap.add_argument("--report", metavar="JSON", help="print the table of a results file and exit")
    ap.add_argument("--max-words", type=int, default=0, help="cap the corpus (smoke tests)")
    ap.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "dopedkp_dec"],
                    choices=METHODS)
    ap.add_argument("--factors", nargs="+", type=float, default=[10.0, 25.0])
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--hidden", type=int, default=256, help="H = E (tied decoder)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--eval-batch", type=int, default=10)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--cmr", type=float, default=0.5, help="co-matrix dropout while annealing")
    ap.add_argument("--s-initial", type=float, default=0.5, help="S's density before annealing")
    ap.add_argument("--anneal-start", type=float, default=0.1, help="fraction of --steps")
    ap.add_argument("--anneal-end", type=float, default=0.6, help="fraction of --steps")
    ap.add_argument("--prune-every", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=12.0, help="cap per model's training")
    ap.add_argument("--jobs", type=int, default=1, help="models trained in parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", type=int, default=0, help="print the loss every N steps")
    ap.add_argument("--save-dir", help="keep each trained model's state_dict here")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    for name in ("steps", "batch", "bptt", "hidden", "layers", "jobs", "threads", "vocab"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(f <= 1 for f in args.factors):
        ap.error("--factors must be > 1")
    if not 0 <= args.anneal_start < args.anneal_end <= 1:
        ap.error("need 0 <= --anneal-start < --anneal-end <= 1")
    return args


def main(argv: Optional[list[str]] = None, log: Callable[[str], None] = print
         ) -> dict[str, Any]:
    args = parse(argv)
    if args.report:
        rows = json.loads(Path(args.report).read_text())["rows"]
        log(table(rows))
        return {"rows": rows}
    if args.write_text:
        Path(args.write_text).write_text(gensim_wiki_text(), encoding="utf-8")
        log(f"wrote {args.write_text}")
        return {}
    data = load_data(args.text, args.vocab, args.seed, args.max_words or None)
    log(f"corpus: {json.dumps(data['info'])}")
    shared = {k: v for k, v in vars(args).items()}
    # The dense baseline first, then one compression factor at a time: with --jobs the
    # models of a factor train side by side, and a stopped run keeps whole factors.
    pairs = [("dense", 1.0)] if "dense" in args.methods else []
    pairs += [(m, f) for f in args.factors for m in args.methods if m != "dense"]
    jobs = [{"method": m, "factor": f, "args": shared, "data": data} for m, f in pairs]
    rows: list[dict[str, Any]] = []
    result = {"corpus": data["info"], "args": shared,
              "counting": "values + (nnz + rows + 1) / 2 per sparse gate matrix (16-bit indices)",
              "paper_25x_ppl_change_percent": PAPER_25X, "torch": torch.__version__,
              "cpu_count": os.cpu_count(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def record(row: dict[str, Any]) -> None:  # written after every model: partial runs count
        rows.append(row)
        out.write_text(json.dumps(result, indent=1) + "\n")
        log(f"{row['method']} {row['factor']:g}x: test ppl {row['test_ppl']:.1f} "
            f"({row['train_seconds']:.0f} s, {row['steps']} steps)")

    if args.jobs == 1:
        for job in jobs:
            record(train_one(job))
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            for row in pool.map(train_one, jobs):
                record(row)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(table(rows))
    log(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
