"""The ``fusedkat`` console script: ``info``, ``demo``, ``fit``, ``convert``, ``export``, ``bench``.

Errors a user can cause (bad arguments, missing files, unknown names) print one line,
``fusedkat <command>: error: <what>``, and exit non-zero without a traceback; set
``FUSEDKAT_DEBUG=1`` to see the traceback of an unexpected failure.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .app.errors import CLIError
from .files import OutputError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus exit status 2) instead of usage + error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fusedkat", description="Kolmogorov-Arnold Transformer (KAT) toolkit.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"fusedkat {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("info", help="versions, device, kernel dispatch and kernel cache")
    s.add_argument("--json", metavar="PATH", help="also write the information as JSON")

    s = sub.add_parser("demo", help="train a KAT and its ViT twin on bundled digits and compare them",
                       description="Train a small KAT and its ViT twin (identical except the MLP) on "
                       "scikit-learn's bundled 8x8 digits; print accuracy, loss, throughput, memory and "
                       "parameters; save training curves and the learned rational functions.")
    s.add_argument("--quick", action="store_true", help="fewer epochs: about 2 minutes on 2 CPU cores")
    s.add_argument("--epochs", type=_positive_int, help="number of epochs (overrides --quick)")
    s.add_argument("--steps", type=_positive_int, help=argparse.SUPPRESS)  # cap on steps, for tests
    s.add_argument("--batch-size", type=_positive_int, default=64)
    s.add_argument("--no-compile", dest="compile", action="store_false", help="run eagerly (no torch.compile)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="fusedkat-demo", metavar="DIR", help="folder for the plots (default %(default)s)")
    s.add_argument("--no-plots", dest="plots", action="store_false", help="do not write plots")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    s.add_argument("--json", metavar="PATH", help="write the results as JSON")

    s = sub.add_parser("fit", help="fit a rational to an activation (coefficients, MSE, E[F^2], gain)")
    s.add_argument("activation", help="identity, relu, leaky_relu, gelu, gelu_tanh, swish/silu, tanh, sigmoid, mish ...")
    s.add_argument("--form", default="A", help="A (official kernels: 1+sum|b_i||x|^i) or B (paper Eq. 9: 1+|sum b_i x^i|)")
    s.add_argument("-m", type=_positive_int, default=5, help="numerator degree (default 5)")
    s.add_argument("-n", type=_positive_int, default=4, help="denominator degree (default 4)")
    s.add_argument("--fresh", action="store_true", help="always run the least-squares fit (skip the shipped table)")
    s.add_argument("--plot", metavar="PNG", help="plot the fit against the target")
    s.add_argument("--json", metavar="PATH", help="write the result as JSON")

    s = sub.add_parser("convert", help="timm ViT checkpoint file -> KAT checkpoint (ViT->KAT transfer)")
    s.add_argument("src", help="ViT checkpoint (.pth/.bin/.safetensors state_dict) for --model")
    s.add_argument("dst", help="where to write the KAT state_dict (.pth)")
    s.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT architecture of src (default %(default)s)")
    s.add_argument("--form", default="A", help="rational form of the KAT (default A, as the official checkpoints)")
    s.add_argument("--num-groups", type=_positive_int, default=8)
    s.add_argument("--no-verify", dest="verify", action="store_false", help="skip the ViT-vs-KAT logits check")
    s.add_argument("--force", action="store_true", help="overwrite dst if it exists (default: refuse)")

    s = sub.add_parser("export", help="KAT checkpoint -> torch.export program, ONNX model or AOTInductor package",
                       description="Export a KAT checkpoint (official layout, or `fusedkat convert` output) with a "
                       "dynamic batch; the written file's logits are checked against the eager model first.")
    s.add_argument("checkpoint", help="KAT state_dict (.pth/.bin/.safetensors)")
    s.add_argument("out", help="file to write (.pt2 for pt2/aoti, .onnx for onnx)")
    s.add_argument("--model", required=True, help="kat_tiny_patch16_224 ..., or the timm ViT a convert output came from")
    s.add_argument("--format", required=True, choices=("onnx", "pt2", "aoti"))
    s.add_argument("--batch", type=_positive_int, help="a fixed batch size instead of a dynamic batch dimension")
    s.add_argument("--img-size", type=_positive_int, help="image side to export for (default: the model's)")
    s.add_argument("--keep-custom-ops", action="store_true", help="pt2: keep the fusedkat::* ops (load needs fusedkat)")
    s.add_argument("--form", default="A", help="rational form of the checkpoint (default A, the official one)")
    s.add_argument("--num-groups", type=_positive_int, default=8)
    s.add_argument("--force", action="store_true", help="overwrite OUT if it exists (default: refuse)")

    s = sub.add_parser("bench", help="run the benchmark suite and print the report")
    s.add_argument("--size", default="small", help="small (CPU, minutes) or paper (the paper's sizes, GPU)")
    s.add_argument("-k", dest="select", metavar="EXPR", help="only benchmarks matching this pytest -k expression")
    s.add_argument("--json", metavar="PATH", help="keep the pytest-benchmark JSON here")
    s.add_argument("--out-dir", metavar="DIR", help="where the report's markdown and plots go (default: next to the JSON)")
    s.add_argument("--no-plots", dest="plots", action="store_false", help="tables only")
    s.add_argument("--bench-dir", help="the bench/ folder of a source checkout (found automatically)")
    return p


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "info":
        import json

        from .app.info import collect, format_info

        from .files import atomic_write_text, check_writable

        if args.json:
            check_writable(args.json, what="--json file")
        d = collect()
        print(format_info(d))
        if args.json:
            atomic_write_text(args.json, json.dumps(d, indent=2) + "\n")
        return 0
    if args.command == "demo":
        from .app.demo import run_demo

        run_demo(quick=args.quick, epochs=args.epochs, max_steps=args.steps, batch_size=args.batch_size,
                 compile=args.compile, device=args.device, seed=args.seed, out_dir=args.out,
                 json_path=args.json, plots=args.plots, progress=args.progress)
        return 0
    if args.command == "fit":
        from .app.fitcmd import run_fit

        run_fit(args.activation, form=args.form, m=args.m, n=args.n, fresh=args.fresh,
                plot=args.plot, json_path=args.json)
        return 0
    if args.command == "convert":
        from .app.convert import run_convert

        run_convert(args.src, args.dst, model=args.model, form=args.form, num_groups=args.num_groups,
                    verify=args.verify, force=args.force)
        return 0
    if args.command == "export":
        from .app.exportcmd import run_export

        run_export(args.checkpoint, args.out, model=args.model, format=args.format, batch=args.batch,
                   img_size=args.img_size, keep_custom_ops=args.keep_custom_ops, force=args.force,
                   form=args.form, num_groups=args.num_groups)
        return 0
    if args.command == "bench":
        from .app.benchcmd import run_bench

        return run_bench(size=args.size, json_path=args.json, select=args.select, bench_dir=args.bench_dir,
                         out_dir=args.out_dir, plots=args.plots)
    raise CLIError(f"unknown command {args.command!r}", exit_code=2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``fusedkat`` script; returns the exit status."""
    try:  # Ctrl-C while parsing (or, below, while torch and the command's modules import): one line
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("fusedkat: interrupted", file=sys.stderr)
        return 130
    if args.command is None:
        parser.print_help()
        return 2
    prog = f"fusedkat {args.command}"
    try:
        return _dispatch(args)
    except CLIError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `fusedkat info | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OutputError as e:  # an output path that cannot (or must not) be written; the message names it
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"{prog}: error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 1
    except Exception as e:  # unexpected: still one line, traceback on request
        if os.environ.get("FUSEDKAT_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:500]
        print(f"{prog}: error: {type(e).__name__}: {msg} (set FUSEDKAT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # python -m fusedkat.cli
    sys.exit(main())
