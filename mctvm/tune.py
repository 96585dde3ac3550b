"""mctvm.tune: MetaSchedule tuning of a program's kernels; compile(tuning=work_dir) uses it.

The kernels are the fused, unscheduled PrimFuncs of the program (pipeline.kernels). Their
best schedules go to a JSON database in work_dir (database_workload.json,
database_tuning_record.json) with a manifest (MANIFEST) naming the model, target and
options they were measured for. compile(tuning=work_dir) applies the records after fusion,
ahead of the default schedules, which take the kernels without a record.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from . import __version__
from .errors import MctvmError

MANIFEST = "mctvm-tuning.json"
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
# Set on the kernels that got their schedule from tuning records.
TUNED_ATTR = "mctvm.tuned"
# Module attributes: the kernels scheduled from records, and the others (JSON lists).
KERNELS_ATTRS = ("mctvm.tuned_kernels", "mctvm.default_kernels")
BUILD_TIMEOUT_S = 120
RPC_TIMEOUT_S = 60


@dataclass
class TuningResult:
    """What mctvm.tune measured: per kernel the best record (all of work_dir's) and the
    default schedule's time; the trials run in this call."""

    work_dir: str
    trials: int
    failed: int
    # name, weight, best_ms (tuned; None: no valid run), default_ms (the default schedule)
    kernels: list = field(default_factory=list)
    untunable: list = field(default_factory=list)  # hand-scheduled kernels, left as they are

    def __str__(self):
        width = max([len(k["name"]) for k in self.kernels] + [6])
        lines = [f"{'kernel'.ljust(width)}  calls  tuned (ms)  default (ms)  compile uses"]
        for k in self.kernels:
            tuned, default = (_ms(k[key]) for key in ("best_ms", "default_ms"))
            use = "tuned" if _record_wins(k) else "default"
            lines.append(f"{k['name'].ljust(width)}  {k['weight']:>5}  {tuned:>10}  "
                         f"{default:>12}  {use}")
        lines.append(f"{self.trials} trials ({self.failed} failed); records in {self.work_dir}")
        if self.untunable:
            lines.append(f"not tunable (hand-scheduled): {', '.join(self.untunable)}")
        return "\n".join(lines)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _record_wins(kernel: dict) -> bool:
    """Whether the best record beat the default schedule (compile uses only those)."""
    if kernel.get("best_ms") is None:
        return False
    return kernel.get("default_ms") is None or kernel["best_ms"] < kernel["default_ms"]


def tune(model, K=None, target="llvm", *, trials: int = 64, work_dir="mctvm-tuning",
         shapes=None, runner=None, progress: bool = True, seed: int | None = None,
         **options) -> TuningResult:
    """Tune the kernels of the program mctvm.compile(model, K, target, shapes=shapes,
    **options) builds, with MetaSchedule and its XGBoost cost model, for `trials` trials.

    Records go to `work_dir`; a work_dir tuned before for the same program is tuned further,
    one for another program is refused. `runner` measures the candidates: None runs them
    here; {"tracker": "host:port", "key": KEY} on a device registered with a TVM RPC
    tracker under KEY (see README, Tuning); or any MetaSchedule Runner. Then
    mctvm.compile(..., tuning=work_dir) builds with the tuned schedules.
    """
    from .compiler import _build_errors, import_program
    from .passes import pipeline

    if trials < 1:
        raise MctvmError(f"trials={trials}; tune at least one trial")
    _check_environment()
    runner = _runner(runner)
    program = import_program(model, K, target, shapes=shapes, **options)
    tgt = program.target
    work_dir = Path(work_dir)
    _claim(work_dir, program.tuning_key())
    with _build_errors(tgt):
        kernels = pipeline.kernels(program.mod, tgt, program.mcq, program.onnx_gemms,
                                   program.mca, program.float_format)
        return _tune_kernels(kernels, tgt, trials, work_dir, runner, progress, seed)


def _tune_kernels(mod, target, trials, work_dir, runner, progress, seed) -> TuningResult:
    from tqdm.auto import tqdm
    from tvm.s_tir import meta_schedule as ms

    _load_tensor_intrinsics(target)
    with _native_log(work_dir / "logs" / "native.log") as stderr:
        tasks, untunable = _tasks(mod, target, work_dir, seed, trials)
        if not tasks:
            raise MctvmError(f"nothing to tune: the program's kernels ({', '.join(untunable)})"
                             " are all hand-scheduled")
        database = ms.database.JSONDatabase(work_dir=str(work_dir))
        builder = ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=BUILD_TIMEOUT_S)
        bar = tqdm(total=trials, unit="trial", desc="tuning", disable=not progress,
                   file=stderr)
        watch = _Progress(bar, [w for _, w in tasks])
        try:
            ms.tune.tune_tasks(
                tasks=[ctx for ctx, _ in tasks], task_weights=[w for _, w in tasks],
                work_dir=str(work_dir), max_trials_global=trials,
                num_trials_per_iter=_per_batch(trials, len(tasks)),
                builder=builder, runner=runner, database=database, cost_model="xgb",
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                   watch],
                task_scheduler="gradient")
        finally:
            bar.close()
        defaults = _measure_defaults([ctx.mod for ctx, _ in tasks], target, builder, runner)
    if watch.trials and watch.failed == watch.trials:
        raise MctvmError(f"every trial failed; the first error: {watch.first_error}")
    kernels = []
    for (ctx, weight), default_ms in zip(tasks, defaults):
        best = database.get_top_k(database.commit_workload(ctx.mod), 1)
        best_ms = 1e3 * _mean(best[0].run_secs) if best else None
        kernels.append({"name": ctx.task_name, "weight": weight, "best_ms": best_ms,
                        "default_ms": default_ms})
    _write_manifest(work_dir, {**_read_manifest(work_dir),
                               "kernels": {k["name"]: {key: v for key, v in k.items()
                                                       if key != "name"} for k in kernels}})
    return TuningResult(str(work_dir), watch.trials, watch.failed, kernels, untunable)


def _measure_defaults(mods, target, builder, runner) -> list:
    """Milliseconds of each kernel under the target's default schedules (None where that
    fails), built and run like the candidates: compile uses only records that beat them."""
    import shutil

    from tvm.s_tir import meta_schedule as ms

    from .targets import backend

    schedules = [p for p in backend(target).schedule_passes(target)
                 if p.info.name == "mctvm.ApplySchedules"]
    with target:  # on copies: ApplySchedules updates the module it is given
        mods = [tvm.transform.Sequential(schedules)(tvm.IRModule(dict(mod.functions_items())))
                for mod in mods]
    mods = [_without_weight_packing(mod) for mod in mods]
    times = [None] * len(mods)
    built = builder.build([ms.builder.BuilderInput(mod, target) for mod in mods])
    ok = [i for i, result in enumerate(built) if result.error_msg is None]
    futures = runner.run([ms.runner.RunnerInput(
        built[i].artifact_path, "cuda" if target.kind.name == "cuda" else "cpu",
        ms.arg_info.ArgInfo.from_prim_func(mods[i]["main"])) for i in ok])
    for i, future in zip(ok, futures):
        result = future.result()
        if result.error_msg is None:
            times[i] = 1e3 * _mean(result.run_secs)
    for result in built:
        if result.artifact_path:
            shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)
    return times


def _without_weight_packing(mod):
    """The kernel on pre-packed weights, as the candidates are measured. Where TVM's pass
    can't remove mctvm's packing block, the kernel keeps it: its time is then a slight
    overestimate (packing touches each weight once, the kernel many times)."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    try:
        return RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    except tvm.error.InternalError:
        return mod


@contextlib.contextmanager
def _native_log(path: Path):
    """Send what TVM's C++ side writes to stderr (warnings about schedule rules it has no
    function for, per design space) to `path`; yield a stream on the real stderr."""
    import sys

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "a") as log, os.fdopen(os.dup(saved), "w") as stderr:
            os.dup2(log.fileno(), 2)
            yield stderr
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _per_batch(trials: int, tasks: int) -> int:
    """Trials measured per batch: at most 64, and few enough that every task gets a batch
    (the task scheduler starts round-robin, each task taking a batch)."""
    return max(1, min(64, trials // tasks))


def _tasks(mod, target, work_dir, seed, trials) -> tuple[list, list]:
    """(TuneContext, weight) per kernel MetaSchedule can tune; the names of the others."""
    import logging

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    from .targets.cpu import usable_cores

    # MetaSchedule logs to stdout at the level of its root logger (DEBUG when unset); the
    # per-task logs still go to work_dir/logs.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    extracted = ms.relax_integration.extract_tasks(mod, target)
    tunable, untunable = [], []
    for task in extracted:
        if task.dispatched[0]["main"].attrs.get("tirx.is_scheduled", False):
            untunable.append(task.task_name)
        else:
            tunable.append(task)
    loggers = get_loggers_from_work_dir(str(work_dir), [t.task_name for t in tunable])
    # The evolutionary search scores a population of candidates with the cost model for each
    # batch; TVM's default 512 takes ~40 s per conv batch on 2 cores. 8 per trial measured,
    # within [64, 512], keeps short tunings short.
    population = min(512, max(64, 8 * _per_batch(trials, max(1, len(tunable)))))
    strategy = ms.search_strategy.EvolutionarySearch(population_size=population)
    contexts = []
    for task, logger, rand_state in zip(tunable, loggers, fork_seed(seed, n=len(tunable))):
        ctx = ms.TuneContext(mod=task.dispatched[0], target=target,
                             space_generator="post-order-apply",
                             search_strategy=strategy, task_name=task.task_name,
                             logger=logger, rand_state=rand_state,
                             num_threads=usable_cores()).clone()
        try:
            spaces = ctx.generate_design_space()
        except Exception:  # pylint: disable=broad-except  # not a kernel MetaSchedule reads
            spaces = []
        if spaces:
            contexts.append((ctx, int(task.weight)))
        else:
            untunable.append(task.task_name)
    return contexts, sorted(untunable)


def build_candidate(mod, target, _params):
    """MetaSchedule's default_build without its `import tvm.s_tir.tensor_intrin`.

    That import takes ~30 s on a small machine, and the LocalBuilder starts fresh worker
    processes for every batch, each under the build timeout: most builds would time out.
    """
    return tvm.tirx.build(_without_weight_packing(mod), target=target)


def _load_tensor_intrinsics(target):
    """Register the tensor intrinsics of the target's family only.

    TuneContext imports the package tvm.s_tir.tensor_intrin, whose __init__ registers every
    family (~35 s here, 20 of them CUDA's). Entering the package in sys.modules without
    running its __init__ makes that import a no-op; its submodules still import as usual.
    """
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        package = importlib.util.module_from_spec(importlib.util.find_spec(name))
        sys.modules[name] = package
        tvm.s_tir.tensor_intrin = package
    triple = str(target.attrs.get("mtriple", "") or "")
    if target.kind.name == "cuda":
        family = "cuda"
    elif triple.startswith(("aarch64", "arm")):
        family = "arm_cpu"
    else:
        family = "x86"
    importlib.import_module(f"{name}.{family}")


def _runner(runner):
    """A MetaSchedule runner for `runner` (None, an RPC tracker spec or a Runner)."""
    from tvm.s_tir import meta_schedule as ms

    if runner is None:
        return ms.runner.LocalRunner()
    if isinstance(runner, ms.runner.Runner):
        return runner
    if not isinstance(runner, dict) or set(runner) - {"tracker", "key", "timeout"} or \
            not {"tracker", "key"} <= set(runner):
        raise MctvmError(f"runner={runner!r}; give None (measure here), {{'tracker': "
                         "'host:port', 'key': KEY} or a MetaSchedule Runner")
    host, _, port = str(runner["tracker"]).rpartition(":")
    if not host or not port.isdigit():
        raise MctvmError(f"RPC tracker {runner['tracker']!r}: give it as 'host:port'")
    try:  # RPCConfig retries an absent tracker for a minute per call
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise MctvmError(f"cannot reach the RPC tracker at {host}:{port} ({err}); start one "
                         "with python -m tvm.exec.rpc_tracker (see README, Tuning)") from None
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port),
                                 tracker_key=runner["key"],
                                 session_timeout_sec=runner.get("timeout", RPC_TIMEOUT_S))
    try:
        servers = config.count_num_servers(allow_missing=False)
    except Exception as err:  # pylint: disable=broad-except  # tracker down, or no server
        raise MctvmError(f"RPC tracker {runner['tracker']} with key {runner['key']!r}: "
                         f"{str(err).strip().splitlines()[-1]}") from None
    return ms.runner.RPCRunner(config, max_workers=servers)


def _check_environment():
    """Fail early, with the fix, where MetaSchedule would fail late or crash."""
    import importlib.metadata
    import importlib.util

    missing = [m for m in ("psutil", "cloudpickle", "xgboost")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise MctvmError(f"tuning needs {', '.join(missing)}: pip install {' '.join(missing)}")
    ffi = importlib.metadata.version("apache-tvm-ffi")
    if ffi.startswith("0.1.15"):
        raise MctvmError(f"apache-tvm-ffi {ffi} crashes MetaSchedule (tvm.ir.save_json "
                         "segfaults): pip install apache-tvm-ffi==0.1.14.post1")


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def _claim(work_dir: Path, key: dict):
    """Make work_dir this program's: new, empty, or already holding its records."""
    if (work_dir / MANIFEST).exists():
        _check_key(work_dir, _read_manifest(work_dir)["program"], key)
        return
    if work_dir.exists() and any(work_dir.iterdir()):
        raise MctvmError(f"{work_dir} is not empty and holds no {MANIFEST}: give a new or "
                         "empty folder as work_dir")
    work_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(work_dir, {"mctvm_version": __version__, "program": key})


def _write_manifest(work_dir: Path, manifest: dict):
    (work_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _read_manifest(work_dir: Path) -> dict:
    path = work_dir / MANIFEST
    if not work_dir.is_dir():
        raise MctvmError(f"tuning work_dir {work_dir} does not exist; tune first "
                         "(mctvm.tune or `mctvm tune`)")
    if not path.is_file():
        raise MctvmError(f"{work_dir} has no {MANIFEST}: it was not written by mctvm.tune")
    try:
        manifest = json.loads(path.read_text())
        manifest["program"]["model_sha256"]  # pylint: disable=pointless-statement
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise MctvmError(f"{path} is corrupt ({type(err).__name__}: {err}); tune again "
                         "into a new work_dir") from None
    return manifest


def _check_key(work_dir: Path, recorded: dict, key: dict):
    """Refuse records made for another model, target, shapes or options, saying which."""
    differ = [name for name in sorted(set(key) | set(recorded))
              if key.get(name) != recorded.get(name)]
    if not differ:
        return
    details = []
    for name in differ:
        was, now = recorded.get(name), key.get(name)
        if name == "model_sha256":
            details.append(f"model (sha256 {str(was)[:12]}... there, {str(now)[:12]}... here)")
        else:
            details.append(f"{name} ({json.dumps(was)} there, {json.dumps(now)} here)")
    raise MctvmError(f"the tuning records in {work_dir} are for another program: "
                     f"{'; '.join(details)}. Use the model, target, shapes and options "
                     "they were tuned with, or tune this program into another work_dir")


@dataclass
class TuningRecords:
    """A tuning work_dir checked against the program being compiled."""

    work_dir: Path
    database: object
    slower: list  # kernels whose best record lost to the default schedule

    @classmethod
    def open(cls, work_dir, key: dict) -> "TuningRecords":
        from tvm.s_tir import meta_schedule as ms

        work_dir = Path(work_dir)
        manifest = _read_manifest(work_dir)
        _check_key(work_dir, manifest["program"], key)
        missing = [name for name in DATABASE_FILES if not (work_dir / name).is_file()]
        if missing:
            raise MctvmError(f"{work_dir} has no {' or '.join(missing)}: the tuning was "
                             "interrupted before its first record; tune again")
        try:
            database = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=False)
        except Exception as err:  # pylint: disable=broad-except  # TVM's parse errors
            raise MctvmError(f"the tuning database in {work_dir} is corrupt: "
                             f"{str(err).strip().splitlines()[-1]}") from None
        kernels = manifest.get("kernels", {})
        slower = sorted(name for name, k in kernels.items()
                        if k.get("best_ms") is not None and not _record_wins(k))
        return cls(work_dir, database, slower)

    def passes(self) -> list:
        return [ApplyTuningRecords(self.database, self.slower)]

    def summary(self, mod) -> dict:
        """metadata["tuning"]: which kernels run tuned schedules, which the default ones."""
        tuned, default = (json.loads(str(mod.attrs[name])) for name in KERNELS_ATTRS)
        return {"work_dir": str(self.work_dir.resolve()), "tuned": tuned, "default": default,
                "records_slower": [name for name in self.slower if name in default]}


def tuning_note(tuning: dict) -> str:
    """One line on metadata["tuning"], for reports."""
    slower = len(tuning.get("records_slower", []))
    return (f"kernels: {len(tuning['tuned'])} tuned (records in {tuning['work_dir']}), "
            f"{len(tuning['default'])} on the default (or hand-written) schedules"
            + (f", {slower} of them because their records were slower" if slower else ""))


@tvm.transform.module_pass(opt_level=0, name="mctvm.ApplyTuningRecords")
class ApplyTuningRecords:
    """MetaScheduleApplyDatabase, marking the kernels it scheduled with TUNED_ATTR; the
    kernels in `slower` (records that lost to the default schedule) are left to those."""

    def __init__(self, database, slower=()):
        self.database = database
        self.slower = set(slower)

    def transform_module(self, mod, _ctx):
        kernels = {gvar: func for gvar, func in mod.functions_items()
                   if isinstance(func, tirx.PrimFunc)}
        with self.database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        tuned = []
        for gvar, func in kernels.items():
            now = mod[gvar]
            if gvar.name_hint in self.slower:
                mod[gvar] = func
            elif not now.same_as(func) and now.attrs.get("tirx.is_scheduled", False):
                mod[gvar] = now.with_attr(TUNED_ATTR, True)
                tuned.append(gvar.name_hint)
        default = [gvar.name_hint for gvar in kernels if gvar.name_hint not in tuned]
        for name, names in zip(KERNELS_ATTRS, (tuned, default)):
            mod = mod.with_attr(name, json.dumps(sorted(names)))
        return mod


@derived_object
class _Progress(PyMeasureCallback):
    """A tqdm bar over the trials, with the weighted sum of the best kernel times."""

    def __init__(self, bar, weights):
        super().__init__()
        self.bar, self.weights = bar, weights
        self.best = [math.inf] * len(weights)
        self.trials = self.failed = 0
        self.first_error = None

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
              runner_results):
        for built, ran in zip(builder_results, runner_results):
            error = built.error_msg or ran.error_msg
            if error:
                self.failed += 1
                self.first_error = self.first_error or str(error).strip().splitlines()[-1]
            else:
                self.best[task_id] = min(self.best[task_id], _mean(ran.run_secs))
        self.trials += len(runner_results)
        self.bar.update(len(runner_results))
        done = [b * w for b, w in zip(self.best, self.weights) if b < math.inf]
        self.bar.set_postfix_str(f"best {1e3 * sum(done):.3f} ms over {len(done)}/"
                                 f"{len(self.best)} kernels, {self.failed} failed")
