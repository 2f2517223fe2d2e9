"""GR-KAN beyond vision: a small GPT-2 learns multi-digit addition, with GELU MLPs vs kanified GR-KAN MLPs.

    python examples/sequence_kanify.py                       # a few minutes on 2 CPU cores
    python examples/sequence_kanify.py --digits 3 --steps 3000 --out runs/addition

Task (generated on the fly, nothing downloaded): ``a+b=`` with ``digits``-digit operands, the model
writes the sum's digits least significant first (the order a carry is computed in), then ``$``.
Sequences are fixed length, e.g. ``123+456=9750$`` -> ``579`` reversed and padded.  Loss: cross
entropy on the answer tokens only.  Accuracy: a problem counts only if *every* answer token is
right (teacher-forced argmax; all-right under teacher forcing is exactly greedy decoding getting
the whole answer), on a fixed set of held-out random problems that training never draws.

Models: one ``transformers.GPT2LMHeadModel`` (random init, ``activation_function="gelu_new"``, the
GPT-2 tanh-GELU), and ``fusedkat.kanify`` of *the same initial model*: every MLP keeps its weights,
gets an identity rational before ``c_fc`` and a rational fitted to tanh-GELU in place of the GELU.
Both train with the same seed, data order, optimizer, steps and batch size (the same budget); the
only difference is the MLP activations.  Training tokens/s are measured on the same machine (eager,
CPU); the machine load (``os.getloadavg``) is printed with them, since it skews them.

Writes ``<out>/results.json`` and ``<out>/rationals.png`` (the learned rationals, dashed: init).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

PLUS, EQ, END = 10, 11, 12
VOCAB = 13


def problem_ids(tokens: torch.Tensor, digits: int) -> torch.Tensor:
    """``a * 10**digits + b`` of each problem row (to keep held-out problems out of training)."""
    p = 10 ** torch.arange(2 * digits - 1, -1, -1)
    operands = torch.cat([tokens[:, :digits], tokens[:, digits + 1: 2 * digits + 1]], dim=1)
    return (operands * p).sum(1)


def problems(n: int, digits: int, gen: torch.Generator, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``n`` random addition problems as token rows ``[n, 3 * digits + 4]`` (int64).

    Layout: a's digits (most significant first), ``+``, b's digits, ``=``, the sum's
    ``digits + 1`` digits least significant first, ``$``.  Problems whose :func:`problem_ids`
    are in ``exclude`` are never drawn.
    """
    hi = 10 ** digits
    a = torch.randint(0, hi, (n,), generator=gen)
    b = torch.randint(0, hi, (n,), generator=gen)
    if exclude is not None:
        keep = ~torch.isin(a * hi + b, exclude)
        while not bool(keep.all()):  # redraw the excluded ones (few: the test set is small)
            a = torch.where(keep, a, torch.randint(0, hi, (n,), generator=gen))
            b = torch.where(keep, b, torch.randint(0, hi, (n,), generator=gen))
            keep = ~torch.isin(a * hi + b, exclude)
    c = a + b

    def to_digits(v: torch.Tensor, k: int, reverse: bool) -> torch.Tensor:
        p = 10 ** torch.arange(k - 1, -1, -1) if not reverse else 10 ** torch.arange(k)
        return (v.unsqueeze(1) // p) % 10

    col = lambda t: torch.full((n, 1), t, dtype=torch.long)  # noqa: E731
    return torch.cat([to_digits(a, digits, False), col(PLUS), to_digits(b, digits, False), col(EQ),
                      to_digits(c, digits + 1, True), col(END)], dim=1)


def answer_slice(digits: int) -> slice:
    """Positions of the logits that predict the answer tokens (sum digits and ``$``)."""
    start = 2 * digits + 2  # the token after '=' is predicted at the '=' position
    return slice(start - 1, start + digits + 1)


def loss_and_correct(model: nn.Module, batch: torch.Tensor, digits: int):
    """Mean answer-token cross entropy, and a bool per row: every answer token right."""
    logits = model(batch[:, :-1]).logits
    s = answer_slice(digits)
    target = batch[:, s.start + 1: s.stop + 1]
    pred = logits[:, s]
    loss = nn.functional.cross_entropy(pred.reshape(-1, VOCAB), target.reshape(-1))
    return loss, (pred.argmax(-1) == target).all(dim=1)


def build_gpt2(digits: int, layers: int, dim: int, heads: int, seed: int) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=3 * digits + 3, n_embd=dim, n_layer=layers,
                                  n_head=heads, n_inner=4 * dim, activation_function="gelu_new",
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                                  bos_token_id=END, eos_token_id=END)
    return transformers.GPT2LMHeadModel(cfg)


@torch.no_grad()
def accuracy(model: nn.Module, test: torch.Tensor, digits: int) -> float:
    model.eval()
    ok = torch.cat([loss_and_correct(model, chunk, digits)[1] for chunk in test.split(1000)])
    model.train()
    return float(ok.float().mean())


def train(model: nn.Module, args, test: torch.Tensor, label: str) -> dict:
    """Train with AdamW (warm-up + cosine); returns accuracy history, final numbers and tokens/s."""
    gen = torch.Generator().manual_seed(args.seed + 1)  # the same data order for both models
    # The rational coefficients (numerator a_0..a_5, denominator b_1..b_4, some ~1e-3) get a smaller
    # step and no weight decay: at the linear layers' step Adam moves a_5 by more than its own size
    # per step and the rationals blow up into high-order polynomials.
    rational = [p for n, p in model.named_parameters() if n.endswith(("weight_numerator", "weight_denominator"))]
    others = [p for n, p in model.named_parameters() if not n.endswith(("weight_numerator", "weight_denominator"))]
    groups = [{"params": others}]
    if rational:
        groups.append({"params": rational, "lr": args.lr * args.rational_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + torch.cos(torch.tensor(s / args.steps * 3.14159)).item()))
    history, train_time, tokens = [], 0.0, 0
    held_out = problem_ids(test, args.digits)
    model.train()
    for step in range(1, args.steps + 1):
        batch = problems(args.batch_size, args.digits, gen, exclude=held_out)
        t0 = time.perf_counter()
        loss, _ = loss_and_correct(model, batch, args.digits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        train_time += time.perf_counter() - t0
        tokens += batch[:, :-1].numel()
        if step % args.eval_every == 0 or step == args.steps:
            acc = accuracy(model, test, args.digits)
            history.append({"step": step, "loss": float(loss.detach()), "accuracy": acc})
            print(f"  [{label}] step {step:5d}  loss {float(loss.detach()):.4f}  held-out exact-match {100 * acc:5.1f}%", flush=True)
    return {"history": history, "accuracy": history[-1]["accuracy"], "final_loss": history[-1]["loss"],
            "tokens_per_s": tokens / train_time, "train_seconds": train_time,
            "params": sum(p.numel() for p in model.parameters())}


def rational_layers(model: nn.Module, report) -> list:
    """(name, GroupRational) of every rational kanify added: KANMlp-style names ``h.i.act1`` / ``h.i.act2``."""
    out = []
    for i, c in enumerate(report.converted):
        out.append((f"h.{i}.act1", model.get_submodule(c.fc1).rational))
        out.append((f"h.{i}.act2", model.get_submodule(c.act)))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--digits", type=int, default=2)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--rational-lr", type=float, default=0.1, help="the rationals' learning rate, as a fraction of --lr")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--num-groups", type=int, default=8)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a small shared CPU more threads are much slower; 0: torch default)")
    ap.add_argument("--out", default="runs/sequence_kanify", help="folder for results.json and rationals.png")
    args = ap.parse_args(argv)
    for name in ("digits", "steps", "batch_size", "layers", "dim", "heads", "test_size", "eval_every"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.test_size > 10 ** (2 * args.digits) // 2:
        ap.error(f"--test-size must be at most half of the {10 ** (2 * args.digits)} {args.digits}-digit problems")

    from fusedkat.files import check_writable, check_writable_dir

    out = check_writable_dir(args.out)  # fail before training, not after
    check_writable(out / "results.json")
    check_writable(out / "rationals.png")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, out)
    finally:
        torch.set_num_threads(threads)


def _run(args, out: Path) -> dict:
    import fusedkat
    from fusedkat.app.plots import plot_rationals
    from fusedkat.files import atomic_write_text

    logging.getLogger("transformers").setLevel(logging.ERROR)

    test = problems(args.test_size, args.digits, torch.Generator().manual_seed(10_000 + args.seed))
    gelu = build_gpt2(args.digits, args.layers, args.dim, args.heads, args.seed)
    kan, report = fusedkat.kanify(copy.deepcopy(gelu), num_groups=args.num_groups)
    print(report)
    init_fits = {name: act.fit for name, act in rational_layers(kan, report)}

    t0 = time.perf_counter()
    results = {"GELU MLP": train(gelu, args, test, "GELU"), "GR-KAN MLP (kanify)": train(kan, args, test, "GR-KAN")}
    load = os.getloadavg()
    plot_rationals(rational_layers(kan, report), out / "rationals.png", reference=init_fits)

    print(f"\n{args.digits}-digit addition, GPT-2 {args.layers} layers x {args.dim} dims, {args.steps} steps x "
          f"{args.batch_size} problems, held-out exact match on {args.test_size} problems")
    print(f"  {'model':<22} {'params':>8} {'exact match':>12} {'final loss':>11} {'train tokens/s':>15}")
    for label, r in results.items():
        print(f"  {label:<22} {r['params']:8d} {100 * r['accuracy']:11.1f}% {r['final_loss']:11.4f} {r['tokens_per_s']:15.0f}")
    print(f"  (eager CPU, {torch.get_num_threads()} torch threads, load average {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f} on {os.cpu_count()} cores at the end; {time.perf_counter() - t0:.0f} s)")
    summary = {"args": vars(args), "load_average": load, "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "kanify": report.to_dict(), "results": results}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1))
    print(f"wrote {out / 'results.json'} and {out / 'rationals.png'}")
    return summary


if __name__ == "__main__":
    main()
