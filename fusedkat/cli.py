"""The ``fusedkat`` console script: ``info``, ``demo``, ``fit``, ``convert``, ``export``, ``bench``, ``train``, ``eval``.

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

    s = sub.add_parser("train", help="train a KAT on an image folder (DIR/train, DIR/val); DDP via torchrun",
                       description="Train a KAT (or any timm model) on ImageNet-style class folders with the "
                       "DeiT recipe. One process: `fusedkat train ...`; several GPUs: `torchrun "
                       "--nproc-per-node N -m fusedkat train ...`. Writes OUTPUT/last.pth (every epoch and on "
                       "Ctrl-C), best.pth, metrics.jsonl, curves.png, config.json.")
    s.add_argument("--data-dir", required=True, help="folder with train/<class>/<image> (and val/<class>/<image>)")
    s.add_argument("--val-dir", help="validation class folders (default DATA_DIR/val)")
    s.add_argument("--model", default="kat_tiny_patch16_224", help="timm model name (default %(default)s)")
    s.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="extra timm.create_model kwargs, e.g. depth=6")
    s.add_argument("--img-size", type=_positive_int, help="input size (default: the model's, 224)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--init-from-vit", metavar="FILE", help="start from a timm ViT checkpoint (ViT -> KAT transfer)")
    g.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pth")
    s.add_argument("--vit-model", help="timm ViT of --init-from-vit (default: vit_{tiny,small,base}_patch16_224 by --model)")
    s.add_argument("--output", default="fusedkat-train", metavar="DIR", help="run folder (default %(default)s)")
    s.add_argument("--force", action="store_true", help="overwrite a previous run in --output")
    s.add_argument("--epochs", type=_positive_int, default=300)
    s.add_argument("--batch-size", type=_positive_int, default=128, help="per process (default %(default)s)")
    s.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per optimizer step")
    s.add_argument("--lr", type=float, help="peak learning rate (default 1e-3 x global batch / 1024)")
    s.add_argument("--weight-decay", type=float, default=0.05)
    s.add_argument("--opt", default="adamw", help="timm optimizer name (default %(default)s)")
    s.add_argument("--sched", default="cosine", help="timm scheduler name (default %(default)s)")
    s.add_argument("--warmup-epochs", type=int, default=5)
    s.add_argument("--warmup-lr", type=float, default=1e-6)
    s.add_argument("--min-lr", type=float, default=1e-5)
    s.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    s.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off; default %(default)s)")
    s.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha (0: off; default %(default)s)")
    s.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (0: off; default %(default)s)")
    s.add_argument("--aa", dest="auto_augment", default="rand-m9-mstd0.5-inc1",
                   help="timm auto-augment policy ('none': off; default %(default)s)")
    s.add_argument("--reprob", type=float, default=0.25, help="random erasing probability (default %(default)s)")
    s.add_argument("--color-jitter", type=float, default=0.4)
    s.add_argument("--no-aug", dest="aug", action="store_false",
                   help="no random augmentation (train images preprocessed as for evaluation)")
    s.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate (default %(default)s)")
    s.add_argument("--model-ema", dest="ema", action="store_true", help="keep an EMA of the weights (ModelEmaV3)")
    s.add_argument("--model-ema-decay", dest="ema_decay", type=float, default=0.9998)
    s.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "off"), help="autocast on GPU (default %(default)s)")
    s.add_argument("--no-compile", dest="compile", action="store_false", help="run eagerly (no torch.compile)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=4, help="DataLoader workers per process (default %(default)s)")
    s.add_argument("--check-images", default="verify", choices=("verify", "full", "none"),
                   help="check every image before training: verify (PIL header/structure), full (decode), none")
    s.add_argument("--bad-images", default="error", choices=("error", "skip"), help="corrupt images: stop, or leave them out")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    s = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on a folder of class folders",
                       description="Evaluate a fusedkat train checkpoint or an official-layout KAT state_dict "
                       "with the model's own preprocessing (pretrained_cfg: crop_pct, interpolation, mean/std).")
    s.add_argument("--checkpoint", required=True, metavar="FILE")
    s.add_argument("--data-dir", required=True, help="folder of class folders (e.g. ImageNet val/<synset>/<image>)")
    s.add_argument("--model", help="timm model name (read from fusedkat train checkpoints)")
    s.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--img-size", type=_positive_int, help="input size (default: the checkpoint's or the model's)")
    s.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of a train checkpoint")
    s.add_argument("--batch-size", type=_positive_int, default=128)
    s.add_argument("--workers", type=int, default=4)
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--check-images", default="verify", choices=("verify", "full", "none"))
    s.add_argument("--bad-images", default="error", choices=("error", "skip"))
    s.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
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
    if args.command == "train":
        from .app.imagetrain import parse_model_kwargs, run_train

        cfg = {k: v for k, v in vars(args).items() if k != "command"}
        cfg["model_kwargs"] = parse_model_kwargs(args.model_kwargs)
        if cfg["auto_augment"] in ("none", ""):
            cfg["auto_augment"] = None
        run_train(cfg)
        return 0
    if args.command == "eval":
        from .app.evalcmd import run_eval

        if args.json:
            from .files import OutputError, check_writable

            try:
                check_writable(args.json, what="--json file")
            except OutputError as e:
                raise CLIError(str(e))
        m = run_eval(args.checkpoint, args.data_dir, model=args.model, img_size=args.img_size,
                     model_kwargs=args.model_kwargs, use_ema=args.use_ema, batch_size=args.batch_size,
                     workers=args.workers, device=args.device, check_images=args.check_images,
                     bad_images=args.bad_images)
        if args.json:
            import json

            from .files import atomic_write_text

            atomic_write_text(args.json, json.dumps(m, indent=2))
        return 0
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
