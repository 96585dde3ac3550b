"""The `mctvm` command line: compile, tune, run, info, demo, sweep, mcda."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

from .errors import MctvmError
from .mcq_options import ACTIVATION_DTYPES


def _shape_option(text: str):
    try:
        name, dims = text.split("=", 1)
        return name, tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shape takes NAME=D1,D2,... (for example input=64,1,28,28), got '{text}'"
        ) from None


def _mcq_options(args) -> dict:
    """The MCQ options given on the command line, as mctvm.compile keywords."""
    options = {"quantize": tuple(args.quantize), "skip": tuple(args.skip), "sort": args.sort,
               "normalize": args.normalize, "order": args.order,
               "activation_dtype": args.activation_dtype,
               "sparse": args.sparse}
    if args.K_weights is not None:
        options["K_weights"] = args.K_weights
    if args.K_activations is not None:
        options["K_activations"] = args.K_activations
    return options


def _add_mcq_arguments(p):
    p.add_argument("--K-weights", type=float, help="K for weights only")
    p.add_argument("--K-activations", type=float, help="K for activations only")
    p.add_argument("--quantize", nargs="+", default=["weights", "activations"],
                   choices=["weights", "activations"])
    p.add_argument("--skip", nargs="*", default=["first"],
                   help="layers kept float: first, last or ONNX node names (none: --skip)")
    p.add_argument("--sort", action="store_true", help="sort magnitudes before sampling")
    p.add_argument("--normalize", default="layer", choices=["layer", "channel"])
    p.add_argument("--order", default="sign", choices=["sign", "natural"],
                   help="the weights' CDF order: each output channel's positives, then its "
                        "negatives (sign), or the tensor's own (natural)")
    p.add_argument("--activation-dtype", default="auto", choices=list(ACTIVATION_DTYPES))
    p.add_argument("--sparse", default="auto", choices=["auto", "dense", "csr", "bsr"],
                   help="integer GEMM kernels: by measured sparsity (auto), or forced")


def cmd_compile(args):
    import mctvm

    model = mctvm.compile(args.model, K=args.K, target=args.target, shapes=dict(args.shape),
                          dump_dir=args.dump_ir, tuning=args.tuning, **_mcq_options(args))
    out = args.output or Path(args.model).with_suffix(".so").name
    path = model.export_library(out)
    print(f"compiled {args.model} for {model.target.kind.name} -> {path}")
    for info in model.input_info:
        print(f"  input  {info.name}: {list(info.shape)} {info.dtype}")
    for info in model.output_info:
        print(f"  output {info.name}: {list(info.shape)} {info.dtype}")
    if "tuning" in model.metadata:
        from .tune import tuning_note

        print(f"  {tuning_note(model.metadata['tuning'])}")


def cmd_tune(args):
    """Tune the program's kernels with MetaSchedule; `compile --tuning` uses the records."""
    import mctvm

    if (args.rpc_tracker is None) != (args.rpc_key is None):
        raise MctvmError("--rpc-tracker and --rpc-key go together")
    runner = {"tracker": args.rpc_tracker, "key": args.rpc_key} if args.rpc_tracker else None
    result = mctvm.tune(args.model, K=args.K, target=args.target, shapes=dict(args.shape),
                        trials=args.trials, work_dir=args.work_dir, runner=runner,
                        **_mcq_options(args))
    print(result)
    print(f"use it: mctvm compile {args.model} --tuning {args.work_dir} (with the same "
          "--K, --target, --shape and options)")


def _read_inputs(model, specs):
    arrays = {}
    names = [info.name for info in model.input_info]
    for position, spec in enumerate(specs):
        name, _, path = spec.rpartition("=")
        if not name:
            if position >= len(names):
                raise MctvmError(f"more --input files than model inputs {names}")
            name = names[position]
        arrays[name] = np.load(path)
    return arrays


def cmd_run(args):
    import mctvm

    model = mctvm.load(args.library)
    inputs = _read_inputs(model, args.input) if args.input else dict(
        zip([i.name for i in model.input_info], model.random_inputs()))
    outputs = model(**inputs)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    for info, array in zip(model.output_info, outputs):
        flat = array.reshape(array.shape[0], -1) if array.ndim > 1 else array[None]
        print(f"{info.name}: shape {list(array.shape)} {array.dtype}; "
              f"argmax per row {flat.argmax(axis=1)[:16].tolist()}")
    if args.output:
        if len(outputs) == 1:
            np.save(args.output, outputs[0])
        else:
            np.savez(args.output, **{i.name: a for i, a in zip(model.output_info, outputs)})
        print(f"wrote {args.output}")
    if args.benchmark:
        print(f"latency: {model.benchmark(repeat=args.benchmark)}")


def cmd_info(args):
    if args.model.endswith((".so", ".tar", ".dll", ".dylib")):
        import mctvm

        model = mctvm.load(args.model)
        print(json.dumps(model.metadata, indent=2))
        return
    from . import frontend

    proto = frontend.load_model(args.model)
    print(f"model: {args.model}  graph '{proto.graph.name}'  producer "
          f"{proto.producer_name} {proto.producer_version}")
    print(f"opset: {frontend.default_opset(proto)}  (imported at >= {frontend.MIN_OPSET})")
    for value in frontend.graph_inputs(proto):
        dims = [d.dim_value or d.dim_param or "?" for d in value.type.tensor_type.shape.dim]
        print(f"input  {value.name}: {dims}")
    for value in proto.graph.output:
        dims = [d.dim_value or d.dim_param or "?" for d in value.type.tensor_type.shape.dim]
        print(f"output {value.name}: {dims}")
    weights = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    print(f"weights: {weights:,} values in {len(proto.graph.initializer)} initializers")
    counts = collections.Counter(node.op_type for node in proto.graph.node)
    print("ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())))
    try:
        frontend.check_supported(proto)
        print("all ops are supported")
    except MctvmError as err:
        print(f"unsupported: {err}")


def cmd_demo(args):
    """Compile the built-in model, measure its accuracy and latency."""
    import mctvm
    from . import models
    from .evaluate import accuracy

    path = models.default_model()
    card = models.model_card()
    name, x, labels = models.evaluation_set() if args.full else (
        "committed test sample (1,000)", *models.test_sample())
    print(f"built-in model: {path.name}, VGG-7 widths {card['architecture']['conv_widths']}, "
          f"float accuracy {100 * card['float_accuracy_10k']:.2f}% on the 10k test set")
    started = time.perf_counter()
    model = mctvm.compile(path, K=args.K, target=args.target,
                          shapes={"input": (args.batch, 1, 28, 28)})
    print(f"compiled (K={args.K}) for {model.target.kind.name} in "
          f"{time.perf_counter() - started:.1f} s")
    acc = accuracy(model, x, labels)
    print(f"accuracy on {name}: {100 * acc:.2f}%  (onnxruntime float on the same images: "
          f"{100 * card['sample_accuracy_1k' if len(x) == 1000 else 'float_accuracy_10k']:.2f}%)")
    if args.K is not None:
        print(model.report())
    single = mctvm.compile(path, K=args.K, target=args.target, shapes={"input": (1, 1, 28, 28)})
    for batch, compiled in ((1, single), (args.batch, model)):
        stats = compiled.benchmark(repeat=5)
        print(f"latency batch {batch:>3}: {stats.median_ms:9.3f} ms  "
              f"({stats.median_ms / batch:.3f} ms/image)")


def cmd_sweep(args):
    """Accuracy/bits/sparsity against K over a labelled data set, as a table and a plot."""
    from . import models, sweep

    if args.data:
        with np.load(args.data) as data:
            x, labels, name = data["x"], data["labels"], args.data
    else:
        name, x, labels = models.evaluation_set() if args.full else (
            "committed test sample (1,000)", *models.test_sample())
    if args.limit:
        x, labels = x[:args.limit], labels[:args.limit]
    options = _mcq_options(args)
    del options["quantize"]  # --modes says what each row quantizes
    rows = sweep.sweep(args.model, x, labels, args.K, modes=args.modes, batch=args.batch,
                       target=args.target, **options)
    print(f"{args.model} on {name} ({len(x)} images)")
    print(sweep.format_rows(rows))
    if args.plot:
        print(f"plot: {sweep.plot(rows, args.plot)}")
    if args.float_bits:
        print(f"quantized floating point (weights and activations, {args.rounding} rounding):")
        for r in sweep.float_format_sweep(args.model, x, labels, args.float_bits,
                                          rounding=args.rounding, batch=args.batch,
                                          target=args.target):
            mark = "  <- best" if r["best"] else ""
            print(f"  {r['bits']} bits = 1+{r['E']}+{r['M']}: {100 * r['accuracy']:6.2f}%{mark}")


def cmd_mcda(args):
    """Digits lost (K) and t_min of each model by MCDA; several models are ranked by K."""
    from . import mcda, models

    if args.data:
        with np.load(args.data) as data:
            x, labels = data["x"], data["labels"]
    else:
        x, labels = models.test_sample()
    x, labels = x[:args.batch], labels[:args.batch]
    t_values = range(args.t[0], args.t[1] + 1)
    results = []
    for path in args.models:
        if args.layers:
            per_layer = mcda.layer_sensitivity(path, x, labels, t=t_values, trials=args.trials,
                                               mode=args.mode, convention=args.convention)
            print(f"{path}: per-layer sensitivity\n{mcda.sensitivity_table(per_layer)}")
            if args.plot:
                stem = Path(args.plot).with_suffix("")
                print(f"plot: {mcda.plot_sensitivity(per_layer, f'{stem}-{Path(path).stem}-layers.png')}")
            continue
        result = mcda.mcda(path, x, labels, t=t_values, trials=args.trials, mode=args.mode,
                           convention=args.convention)
        print(f"{path}\n{result}\n")
        if args.plot:
            stem = Path(args.plot).with_suffix("")
            print(f"plot: {result.plot(f'{stem}-{Path(path).stem}.png')}")
        results.append((path, result))
    if len(results) > 1:
        print("ranking (fewest digits lost = most robust to reduced precision):")
        for rank, (path, r) in enumerate(sorted(results, key=lambda pr: pr[1].digits_lost), 1):
            lo, hi = r.interval
            print(f"{rank:>3}. K = {r.digits_lost:6.3f} [{lo:.3f}, {hi:.3f}]  t_min = "
                  f"{r.t_min:>2}  {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mctvm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile an ONNX model into a deployable library")
    p.add_argument("model")
    p.add_argument("--target", default="llvm",
                   help="cpu | llvm | cuda | a JSON target dict (default: llvm, this CPU)")
    p.add_argument("--K", type=float, default=None, help="MCQ samples per value (default: float)")
    p.add_argument("--shape", type=_shape_option, action="append", default=[],
                   help="concrete shape of an input with dynamic dims: NAME=D1,D2,...")
    p.add_argument("-o", "--output", help="library to write (.so, or .tar of object files)")
    p.add_argument("--dump-ir", help="folder to write the IR after each pipeline phase")
    p.add_argument("--tuning", help="work dir of `mctvm tune` for this model and options")
    _add_mcq_arguments(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("tune", help="tune the kernels (MetaSchedule, XGBoost cost model)")
    p.add_argument("model")
    p.add_argument("--target", default="llvm",
                   help="cpu | llvm | cuda | a JSON target dict (default: llvm, this CPU)")
    p.add_argument("--K", type=float, default=None, help="MCQ samples per value (default: float)")
    p.add_argument("--shape", type=_shape_option, action="append", default=[],
                   help="concrete shape of an input with dynamic dims: NAME=D1,D2,...")
    p.add_argument("--trials", type=int, default=64, help="measured candidates, all kernels")
    p.add_argument("--work-dir", default="mctvm-tuning",
                   help="folder for the records (tuned further if it holds this program's)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure on the device registered with this TVM RPC tracker")
    p.add_argument("--rpc-key", help="the device's key at the tracker")
    _add_mcq_arguments(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("sweep", help="accuracy, bits and sparsity against K (a table and a plot)")
    p.add_argument("model", nargs="?", default=None,
                   help="ONNX classifier (default: the built-in Fashion-MNIST model)")
    p.add_argument("--K", type=float, nargs="+", default=[0.5, 1, 2, 3, 5, 10])
    p.add_argument("--modes", nargs="+", default=["w+a"], choices=["w", "a", "w+a"])
    p.add_argument("--data", help=".npz with arrays x (inputs) and labels; default: the "
                                  "built-in model's Fashion-MNIST test images")
    p.add_argument("--full", action="store_true", help="the full 10k test set (Debian package)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--target", default="llvm")
    p.add_argument("--plot", help="write the Figure-2 style plot to this PNG")
    p.add_argument("--float-bits", type=int, nargs="*", default=[],
                   help="also: accuracy in small float formats of these total bits (e.g. 8 6 5)")
    p.add_argument("--rounding", default="stochastic", choices=["stochastic", "nearest"])
    _add_mcq_arguments(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("run", help="run a compiled library on .npy inputs")
    p.add_argument("library")
    p.add_argument("--input", action="append", default=[],
                   help="an .npy file, in input order, or NAME=file.npy (default: random)")
    p.add_argument("-o", "--output", help="write the output(s) to .npy/.npz")
    p.add_argument("--benchmark", type=int, nargs="?", const=10, default=0,
                   help="also time the program (repeat count, default 10)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("mcda", help="digits lost to reduced precision (MCDA); ranks models")
    p.add_argument("models", nargs="+")
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--t", type=int, nargs=2, default=[1, 16], metavar=("FIRST", "LAST"))
    p.add_argument("--batch", type=int, default=32, help="images in the one batch used")
    p.add_argument("--data", help=".npz with x and labels (default: the built-in test images)")
    p.add_argument("--mode", default="mca", choices=["mca", "pb", "rr"])
    p.add_argument("--convention", default="paper", choices=["paper", "verificarlo", "mcalib"])
    p.add_argument("--layers", action="store_true", help="per-layer sensitivity instead")
    p.add_argument("--plot", help="PNG path stem for the Figure-4 style plots")
    p.set_defaults(func=cmd_mcda)

    p = sub.add_parser("info", help="describe an ONNX model or a compiled library")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="compile and run the built-in Fashion-MNIST model")
    p.add_argument("--target", default="llvm")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--K", type=float, default=None, help="MCQ samples per value (default: float)")
    p.add_argument("--full", action="store_true",
                   help="evaluate on the full 10k test set (Debian's dataset-fashion-mnist)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "sweep" and args.model is None:
        from . import models

        args.model = str(models.default_model())
    try:
        args.func(args)
    except MctvmError as err:
        print(f"mctvm: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # unreadable --input or output path
        print(f"mctvm: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
