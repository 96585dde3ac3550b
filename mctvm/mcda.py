"""MCDA: Monte Carlo Arithmetic trials of a model's loss, and the digits it loses (K, t_min).

`mcda(model, inputs, labels)` compiles the model with inexact() around every GEMM/conv
(InsertMCANoise), runs `trials` noisy inferences of one batch for each virtual precision t,
takes the loss of each (itself perturbed, as the paper does), and fits the MCALIB model
(`mca_fit.fit`). Note: this K is "digits lost", not MCQ's sampling factor K.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import mca_fit
from .errors import MctvmError
from .kernels.inexact import CONVENTION_TEXT, inexact_np

LOSS_STREAM = 1 << 23


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy over the batch, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


LOSSES = {"cross_entropy": cross_entropy}


def trial_seed(seed: int, t: int, trial: int) -> int:
    """The seed of one trial: independent of the order trials run in, or where."""
    return int(np.random.SeedSequence([seed, t, trial]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class MCDAResult:
    """Per-t loss samples, the MCALIB fit (digits lost K, t_min) and how they were made."""

    fit: mca_fit.MCAFit
    samples: dict
    mode: str
    convention: str
    trials: int
    seconds: float
    layers: list | None = None
    extra: dict = field(default_factory=dict)

    @property
    def digits_lost(self) -> float:
        return self.fit.digits_lost

    @property
    def t_min(self) -> int:
        return self.fit.t_min

    @property
    def interval(self) -> tuple:
        """95% interval of the digits lost."""
        return (self.fit.digits_lost - self.fit.ci_halfwidth,
                self.fit.digits_lost + self.fit.ci_halfwidth)

    def __str__(self):
        return (f"MCDA ({self.mode}, {self.trials} trials per t, noise {self.convention}, "
                f"{self.seconds:.1f} s)\n{self.fit}")

    def plot(self, path, title="MCDA: relative standard deviation of the loss"):
        """The paper's Figure 4: log10 RSD against t, the fit, outliers, the ideal 2^-t."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        f = self.fit
        t = np.asarray(f.t, dtype=float)
        log_rsd = np.log10(f.rsd)
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(t[~f.outlier], log_rsd[~f.outlier], "o", label="log10 RSD of the loss")
        ax.plot(t[f.outlier], log_rsd[f.outlier], "x", color="tab:red", ms=9, label="outliers")
        ax.plot(t, f.slope * t + f.intercept, "-", color="tab:orange",
                label=f"fit: K = {f.digits_lost:.2f} digits lost")
        ax.plot(t, -np.log10(2.0) * t, ":", color="k", label="ideal 2^-t")
        ax.axvline(f.t_min, color="gray", ls="--", label=f"t_min = {f.t_min}")
        ax.set_xlabel("virtual precision t (bits)")
        ax.set_ylabel("log10 relative standard deviation")
        ax.set_title(title + f"\n(noise {self.convention}, {self.trials} trials per t)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def compile_for_mcda(model, batch_shape, *, mode="mca", layers=None, convention="paper",
                     target="llvm", **options):
    """The model compiled with MCA noise for inputs of `batch_shape`."""
    import mctvm

    from . import frontend

    proto = frontend.load_model(model)
    name = frontend.graph_inputs(proto)[0].name
    return mctvm.compile(proto, target=target, shapes={name: tuple(batch_shape)},
                         mca={"mode": mode, "layers": layers, "convention": convention}, **options)


def run_trials(compiled, inputs, labels, t_values, trials, seed=0, loss=cross_entropy,
               convention="paper", progress=True, trial_ids=None) -> dict:
    """{t: float64 losses}: one noisy inference of the batch per trial; loss itself perturbed."""
    ids = range(trials) if trial_ids is None else trial_ids
    bar = _progress(len(t_values) * len(ids), progress)
    samples = {}
    for t in t_values:
        losses = np.empty(len(ids))
        for k, trial in enumerate(ids):
            s = trial_seed(seed, t, trial)
            value = np.float32(loss(compiled(inputs, seed=s, t=t), labels))
            losses[k] = inexact_np(np.array([value]), s, t, LOSS_STREAM, convention)[0]
            bar.update(1)
        samples[int(t)] = losses
    bar.close()
    return samples


def mcda(model, inputs, labels, loss="cross_entropy", t=range(1, 17), trials=1000, *,
         mode="mca", layers=None, convention="paper", seed=0, progress=True, target="llvm",
         devices=None, **options) -> MCDAResult:
    """Digits lost (K) and t_min of `model` on one labelled batch, by MCDA.

    `model`: an ONNX model (compiled here with MCA noise) or a CompiledModel built with mca=.
    `loss`: "cross_entropy" or a function (outputs, labels) -> float.
    `devices`: TVM RPC servers ("host:port" or tvm.rpc sessions) to spread the trials over;
    every trial's seed depends only on (seed, t, trial), so the result is the same as here.
    """
    loss_fn = LOSSES.get(loss) if isinstance(loss, str) else loss
    if loss_fn is None:
        raise MctvmError(f"loss={loss!r}; use one of {sorted(LOSSES)} or a function")
    if trials < 2:
        raise MctvmError(f"trials={trials}: the relative standard deviation needs at least 2")
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    compiled = model if hasattr(model, "takes_t") else compile_for_mcda(
        model, inputs.shape, mode=mode, layers=layers, convention=convention, target=target,
        **options)
    if not compiled.takes_t:
        raise MctvmError("the CompiledModel has no MCA noise; compile it with mca=True")
    info = compiled.metadata["mca"]
    started = time.perf_counter()
    t_values = [int(v) for v in t]
    if devices:
        samples = _run_remote(compiled, devices, inputs, labels, t_values, trials, seed, loss_fn,
                              info["convention"])
    else:
        samples = run_trials(compiled, inputs, labels, t_values, trials, seed, loss_fn,
                             info["convention"], progress)
    fit = mca_fit.fit(t_values, samples, convention=CONVENTION_TEXT[info["convention"]])
    return MCDAResult(fit, samples, info["mode"], CONVENTION_TEXT[info["convention"]], trials,
                      time.perf_counter() - started, info["layers"])


def _run_remote(compiled, devices, inputs, labels, t_values, trials, seed, loss_fn, convention):
    """Trials split round-robin over RPC servers, one thread each; merged in trial order."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from tvm import rpc

    sessions = [rpc.connect(*_address(d)) if isinstance(d, str) else d for d in devices]
    shares = [list(range(i, trials, len(sessions))) for i in range(len(sessions))]
    with tempfile.TemporaryDirectory() as folder:
        # Export once, here: TVM's export is not safe to run from several threads at once.
        library = compiled.export_library(Path(folder) / "mctvm_mcda.so")
        remotes = [compiled.on_rpc(session, library) for session in sessions]

    def work(args):
        remote, ids = args
        return ids, run_trials(remote, inputs, labels, t_values, len(ids), seed, loss_fn,
                               convention, progress=False, trial_ids=ids)

    with ThreadPoolExecutor(len(sessions)) as pool:
        parts = list(pool.map(work, zip(remotes, shares)))
    samples = {}
    for t in t_values:
        merged = np.empty(trials)
        for ids, part in parts:
            merged[ids] = part[int(t)]
        samples[int(t)] = merged
    return samples


def _address(device: str):
    host, _, port = device.rpartition(":")
    if not host or not port.isdigit():
        raise MctvmError(f"device {device!r}: give RPC servers as 'host:port'")
    return host, int(port)


class _NoBar:
    def update(self, _n):
        pass

    def close(self):
        pass


def _progress(total, enabled):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="MCDA trials", unit="trial", leave=False)


def layer_sensitivity(model, inputs, labels, t=range(1, 17), trials=1000, **kwargs) -> list:
    """MCDA with noise on one GEMM/conv at a time: [(site, MCDAResult)] in graph order."""
    inputs = np.asarray(inputs)
    probe = compile_for_mcda(model, inputs.shape, layers=[], **_compile_keys(kwargs))
    results = []
    for site in probe.metadata["mca"]["sites"]:
        compiled = compile_for_mcda(model, inputs.shape, layers=[site["index"]],
                                    **_compile_keys(kwargs))
        result = mcda(compiled, inputs, labels, t=t, trials=trials, **_run_keys(kwargs))
        results.append((site, result))
    return results


def _compile_keys(kwargs):
    return {k: v for k, v in kwargs.items() if k in ("mode", "convention", "target")}


def _run_keys(kwargs):
    return {k: v for k, v in kwargs.items() if k in ("loss", "seed", "progress")}


def sensitivity_table(results) -> str:
    lines = [f"{'site':>4}  {'op':<7} {'digits lost K':>14} {'95% CI':>17} {'t_min':>5}"]
    for site, r in results:
        lo, hi = r.interval
        lines.append(f"{site['index']:>4}  {site['op']:<7} {r.digits_lost:14.3f} "
                     f"[{lo:7.3f},{hi:7.3f}] {r.t_min:>5}")
    return "\n".join(lines)


def plot_sensitivity(results, path):
    """A bar chart of digits lost per GEMM/conv, with the 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{site['index']}:{site['op']}" for site, _ in results]
    values = [r.digits_lost for _, r in results]
    errors = [r.fit.ci_halfwidth for _, r in results]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(results) + 2), 3.6))
    ax.bar(labels, values, yerr=errors, capsize=3, color="tab:blue")
    ax.set_ylabel("digits lost K")
    ax.set_xlabel("GEMM/conv (graph order)")
    ax.set_title("MCDA per-layer sensitivity (noise on one layer at a time)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
