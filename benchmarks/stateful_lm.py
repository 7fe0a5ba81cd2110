"""Long stateful runs: a word-level language model whose hidden state is carried across the
whole epoch, as in PyTorch's ``examples/word_language_model`` (2-layer LSTM, 200 units, SGD
lr 20 divided by 4 when validation stops improving, gradient norm clipped to 0.25, BPTT 35,
batch 20, dropout 0.2), with the recurrent layer swapped.

The corpus is bundled with every Python: the standard library's own source (``Lib/**/*.py``,
PSF licence, site-packages excluded) read in sorted path order, split into words and symbols, the most frequent
``--vocab`` kept. Nothing is downloaded. With the defaults the state is carried over 15,000
steps per training stream and 6,000 per validation stream.

Prints validation perplexity per epoch and the largest |c| seen, then a table.

    python benchmarks/stateful_lm.py                        # ~20 min on 2 cores: every cell
    python benchmarks/stateful_lm.py --cells lstm peephole --epochs 2
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import re
import sys
import sysconfig
import time
from collections import Counter

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from speed import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from peephole_lstm import PeepholeLSTM  # noqa: E402

# name: (description, constructor kwargs of PeepholeLSTM or None for nn.LSTM, zero peepholes)
CELLS = {
    "lstm": ("nn.LSTM", None, False),
    "none": ('PeepholeLSTM(peephole="none")', dict(peephole="none"), False),
    "peephole": ("PeepholeLSTM() (diagonal peepholes, U(-k, k) init)", {}, False),
    "zero": ("PeepholeLSTM(), peepholes set to zero", {}, True),
    "clip10": ("PeepholeLSTM(cell_clip=10)", dict(cell_clip=10.0), False),
    "clip50": ("PeepholeLSTM(cell_clip=50)", dict(cell_clip=50.0), False),
}


def corpus(tokens: int, vocab: int) -> tuple[torch.Tensor, int]:
    """Token ids of the standard library's source: ``1.2 * tokens`` words (train, then val)."""
    words: list[str] = []
    want = int(tokens * 1.2)
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True)):
        if "site-packages" in path:
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            words += re.findall(r"[A-Za-z_]+|[0-9]+|[^\sA-Za-z_0-9]", f.read()) + ["<eos>"]
        if len(words) >= want:
            break
    words = words[:want]
    counts = Counter(words[:tokens])
    itos = ["<unk>"] + [w for w, _ in counts.most_common(vocab - 1)]
    stoi = {w: i for i, w in enumerate(itos)}
    return torch.tensor([stoi.get(w, 0) for w in words]), len(itos)


def batchify(ids: torch.Tensor, bsz: int) -> torch.Tensor:
    n = ids.size(0) // bsz
    return ids[: n * bsz].view(bsz, -1).t().contiguous()  # (steps, bsz)


class WordLM(nn.Module):
    def __init__(self, cell: str, vocab: int, nhid: int) -> None:
        super().__init__()
        _, kwargs, zero = CELLS[cell]
        self.drop = nn.Dropout(0.2)
        self.enc = nn.Embedding(vocab, nhid)
        self.dec = nn.Linear(nhid, vocab)
        if kwargs is None:
            self.rnn = nn.LSTM(nhid, nhid, 2, dropout=0.2)
        else:
            self.rnn = PeepholeLSTM(nhid, nhid, 2, dropout=0.2, **kwargs)
            if zero:
                with torch.no_grad():
                    for name, w in self.rnn.named_parameters():
                        if name.startswith("weight_c"):
                            w.zero_()
        nn.init.uniform_(self.enc.weight, -0.1, 0.1)
        nn.init.uniform_(self.dec.weight, -0.1, 0.1)
        nn.init.zeros_(self.dec.bias)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.drop(self.enc(x)), hidden)
        return self.dec(self.drop(out)), hidden


def run(cell: str, train: torch.Tensor, val: torch.Tensor, vocab: int, args) -> dict:
    torch.manual_seed(args.seed)
    model = WordLM(cell, vocab, args.nhid)
    crit = nn.CrossEntropyLoss()
    lr, best, bptt = 20.0, math.inf, 35
    cmax_train = cmax_val = 0.0
    t0 = time.perf_counter()

    def evaluate() -> tuple[float, float]:
        model.eval()
        total, hidden, cmax = 0.0, None, 0.0
        with torch.no_grad():
            for i in range(0, val.size(0) - 1, bptt):
                x, y = val[i : i + bptt], val[i + 1 : i + 1 + bptt]
                x = x[: len(y)]
                out, hidden = model(x, hidden)
                cmax = max(cmax, hidden[1].abs().max().item())
                total += len(x) * crit(out.view(-1, vocab), y.reshape(-1)).item()
        return total / (val.size(0) - 1), cmax

    for epoch in range(args.epochs):
        model.train()
        hidden = None
        for i in range(0, train.size(0) - 1, bptt):
            x, y = train[i : i + bptt], train[i + 1 : i + 1 + bptt]
            x = x[: len(y)]
            if hidden is not None:
                hidden = tuple(h.detach() for h in hidden)  # carried, not backpropagated through
            model.zero_grad()
            out, hidden = model(x, hidden)
            crit(out.view(-1, vocab), y.reshape(-1)).backward()
            cmax_train = max(cmax_train, hidden[1].abs().max().item())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
        loss, cmax = evaluate()
        cmax_val = max(cmax_val, cmax)
        print(f"  {cell:9s} epoch {epoch + 1}: val ppl {math.exp(loss):8.1f}  max|c| val {cmax:8.1f}  lr {lr:g}",
              flush=True)
        if loss < best:
            best = loss
        else:
            lr /= 4.0
    return {"ppl": math.exp(best), "cmax_train": cmax_train, "cmax_val": cmax_val,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=300_000, help="training tokens (validation: a fifth)")
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--nhid", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    ids, vocab = corpus(args.tokens, args.vocab)
    train = batchify(ids[: args.tokens], 20)
    val = batchify(ids[args.tokens :], 10)
    print(f"# {cpu_model()}, torch {torch.__version__}; corpus: Python {sys.version.split()[0]} stdlib source, "
          f"{args.tokens} training tokens, vocab {vocab}; state carried over {train.size(0)} training and "
          f"{val.size(0)} validation steps per stream; seed {args.seed}")
    results = {cell: run(cell, train, val, vocab, args) for cell in args.cells}
    base = results.get("lstm", {}).get("ppl")
    print("\n| recurrent layer | best val ppl | vs nn.LSTM | max abs(c) train | max abs(c) val | time s |")
    print("|---|---:|---:|---:|---:|---:|")
    for cell, r in results.items():
        ratio = f"{r['ppl'] / base:.2f}x" if base else "-"
        print(f"| {CELLS[cell][0]} | {r['ppl']:.1f} | {ratio} | {r['cmax_train']:.0f} | {r['cmax_val']:.0f} | "
              f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
