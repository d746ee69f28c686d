"""``quantize``: the fastest INT8 model inside an accuracy budget, or FP32 with the reason.

The search, in order:
1. check the inputs (model, data, metric, budget, output path) before any slow work;
2. prepare the model (fixed shapes, opset ≥ 13, onnxruntime pre-processing);
3. measure the FP32 baseline (graph-optimized by onnxruntime) and its eval outputs;
4. build each recipe, score it on eval data held apart from calibration data, time it
   interleaved with the baseline;
5. when a recipe misses the budget, rank its nodes by measured per-node error and keep the
   worst in FP32, more each round, until the budget holds or it is no longer faster;
6. re-time the best in-budget candidates side by side and keep the fastest, and only if it beats
   FP32; write it atomically with a report of every candidate.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnx

from edgekit.errors import ConfigError, DataError, OutputError, QuantizationError, first_line
from edgekit.optimize import fidelity as fid
from edgekit.optimize.benchmarking import summarize, time_interleaved
from edgekit.optimize.building import build_candidate
from edgekit.optimize.datasets import Dataset, ImagePreprocessing, load_dataset, load_labels
from edgekit.optimize.graphs import ensure_node_names, tail_nodes
from edgekit.optimize.guarding import SearchTimeout, run_limited
from edgekit.optimize.inspecting import ModelInfo, inspect_model
from edgekit.optimize.loading import load_model
from edgekit.optimize.preparing import prepare
from edgekit.optimize.recipes import Recipe, auto_recipes
from edgekit.optimize.sensitivity import rank_nodes
from edgekit.optimize.sessions import make_session, run
from edgekit.optimize.shapes import Shapes

# A candidate must beat FP32 by this margin in the final side-by-side timing: a 1-2 % "win" is
# within this machine's noise and not worth INT8's risk.
FASTER_MARGIN = 0.97


@dataclass(frozen=True)
class QuantizeSettings:
    method: Literal["auto", "dynamic", "static"] = "auto"
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool | None = None
    calibration: str | None = None
    eval: str | None = None
    labels: str | None = None
    metric: str | None = None
    max_drop: str | None = None
    input_shapes: Shapes = field(default_factory=dict)
    exclude_nodes: tuple[str, ...] = ()
    activation_type: Literal["uint8", "int8"] = "uint8"
    reduce_range: bool | None = None
    threads: int = 1
    seed: int = 0
    budget_time: float | None = 480.0  # with the last timing and writing, well within 10 minutes
    preprocessing: ImagePreprocessing = field(default_factory=ImagePreprocessing)
    calibration_samples: int = 128
    eval_samples: int = 1000
    mixed_precision: bool = True


@dataclass
class CandidateResult:
    recipe: Recipe
    verdict: str = "pending"  # chosen | in budget | over budget | slower | failed | skipped
    reason: str = ""
    size_bytes: int | None = None
    latency_ms: float | None = None
    latency_ratio: float | None = None
    fidelity: fid.Fidelity | None = None
    seconds: float = 0.0
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.recipe.name,
            "settings": self.recipe.to_dict(),
            "verdict": self.verdict,
            "reason": self.reason,
            "size_bytes": self.size_bytes,
            "latency_p50_ms": self.latency_ms,
            "latency_ratio": self.latency_ratio,
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class QuantizeReport:
    model: str
    output: str
    chosen: str  # candidate name, or "fp32"
    reason: str
    metric: str
    budget: str
    threads: int
    baseline: dict[str, Any]
    candidates: list[CandidateResult]
    calibration: dict[str, Any]
    eval: dict[str, Any]
    steps: list[str]
    warnings: list[str]
    seconds: float

    @property
    def chosen_result(self) -> CandidateResult | None:
        return next((c for c in self.candidates if c.verdict == "chosen"), None)

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen_result
        return {
            "schema": 1,
            "model": self.model,
            "output": self.output,
            "chosen": self.chosen,
            "reason": self.reason,
            "precision": "fp32" if chosen is None else ("mixed" if chosen.recipe.exclude else "int8"),
            "method": None if chosen is None else chosen.recipe.method,
            "metric": self.metric,
            "budget": self.budget,
            "threads": self.threads,
            "baseline": self.baseline,
            "result": None if chosen is None else chosen.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "calibration": self.calibration,
            "eval": self.eval,
            "steps": self.steps,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 1),
        }


class Progress(Protocol):
    def stage(self, text: str) -> None: ...
    def candidate(self, index: int, total: int, name: str) -> None: ...
    def result(self, result: CandidateResult) -> None: ...


class _Silent:
    def stage(self, text: str) -> None:
        pass

    def candidate(self, index: int, total: int, name: str) -> None:
        pass

    def result(self, result: CandidateResult) -> None:
        pass


def check_output_path(out: Path, model: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if out.resolve() == model.resolve():
        raise OutputError(f"output {out} would overwrite the input model")
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; give a file name like model.int8.onnx")
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {out}: folder {parent} is not writable")


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def shapes_to_fix(info: ModelInfo, given: Shapes, sample: Dataset | None) -> Shapes:
    """Input shapes to pin: those given, else from the data; a model whose only symbolic dim is
    the batch keeps it (static quantization handles that), others are fixed whole."""
    shapes: Shapes = {}
    for inp in info.inputs:
        if inp.name in given:
            shapes[inp.name] = given[inp.name]
            continue
        if inp.shape is None or not inp.symbolic:
            continue
        only_batch = all(isinstance(d, int) and d > 0 for d in inp.shape[1:])
        if only_batch:
            continue
        if sample is None:
            raise DataError(
                f"input {inp.name!r} has symbolic dimensions {inp.shape_text()}",
                hint=f"pass --input-shape {inp.name}=D1,D2,... or calibration data",
            )
        shapes[inp.name] = (1, *sample.arrays[inp.name].shape[1:])
    return shapes


# A step with less time than this left is not started.
MIN_STEP_SECONDS = 10.0

# onnxruntime's calibrators keep every intermediate tensor of every calibration sample in memory
# (histogram methods twice over): bound what one calibration may hold.
CALIBRATION_MEMORY = 3 * 2**30


def activation_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all intermediate tensors for one sample, from the shapes inference recorded."""
    total = 0
    for value in model.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            total += int(np.prod([d.dim_value for d in dims])) * 4
    return total


def calibration_plan(recipe: Recipe, available: int, per_sample: int) -> tuple[int, int | None]:
    """(samples, stride): calibrate on ``samples`` in strides of ``stride`` samples, each stride's
    ranges merged into the last, so memory stays bounded however many samples there are."""
    if recipe.method == "dynamic" or per_sample == 0:
        return available, None
    factor = 1 if recipe.calibration == "minmax" else 3
    stride = max(1, min(available, CALIBRATION_MEMORY // (per_sample * factor)))
    if stride >= available:
        return available, None
    return (available // stride) * stride, stride


def _eval_batch_size(model: onnx.ModelProto) -> int:
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            return 32
        if dims and dims[0].dim_value > 1:
            return int(dims[0].dim_value)
    return 1


def _outputs(path: Path | str, data: Dataset, batch: int, threads: int) -> list[list[np.ndarray]]:
    session = make_session(path, threads=threads)
    return [run(session, feed) for feed in data.batches(batch)]


def _time_pair(
    base: Path, cand: Path, feed: dict[str, np.ndarray], threads: int, seconds: float = 1.5
) -> tuple[float, float]:
    s_base, s_cand = make_session(base, threads=threads), make_session(cand, threads=threads)
    t0 = time.perf_counter()
    run(s_base, feed)
    run(s_cand, feed)
    once = max((time.perf_counter() - t0) / 2, 1e-6)
    runs = int(min(max(seconds / once, 20), 1000))
    samples = time_interleaved([lambda: run(s_base, feed), lambda: run(s_cand, feed)], runs=runs, warmup=min(10, runs))
    return summarize(samples[0], 1).p50_ms, summarize(samples[1], 1).p50_ms


def _timing_feed(data: Dataset) -> dict[str, np.ndarray]:
    return {k: v[:1] for k, v in data.arrays.items()}


class _Search:
    def __init__(self, model_path: Path, out: Path, settings: QuantizeSettings, progress: Progress) -> None:
        self.model_path, self.out, self.s, self.progress = model_path, out, settings, progress
        self.started = time.monotonic()
        self.warnings: list[str] = []
        self.results: list[CandidateResult] = []

    def time_left(self) -> float:
        if self.s.budget_time is None:
            return float("inf")
        return self.s.budget_time - (time.monotonic() - self.started)

    def run(self) -> QuantizeReport:
        s = self.s
        check_output_path(self.out, self.model_path)
        model = load_model(self.model_path)
        info = inspect_model(self.model_path, model)
        if info.quantization != "none":
            raise QuantizationError(
                f"{self.model_path} is already quantized ({info.quantization})", hint="quantize the FP32 model"
            )
        if s.labels and not s.eval and not s.calibration:
            raise ConfigError("--labels needs --eval data to label", field="--labels")
        metric_name = s.metric or fid.default_metric(bool(s.labels), [o.shape for o in info.outputs])
        metric = fid.parse_metric(metric_name)
        budget = fid.parse_budget(s.max_drop or fid.default_budget(metric), metric)
        if metric.needs_labels and not s.labels:
            raise ConfigError("the accuracy metric needs --labels", field="--metric")

        self.progress.stage("loading data")
        calib, evals, labels = self._load_data(info)
        shapes = shapes_to_fix(info, s.input_shapes, calib)

        with tempfile.TemporaryDirectory(prefix="edgekit-quantize-") as tmp:
            work = Path(tmp)
            self.progress.stage("preparing the model")
            prepared = prepare(ensure_node_names(model), shapes, work)
            self.warnings += prepared.warnings
            prepared_model = onnx.load(str(prepared.path))
            batch = _eval_batch_size(prepared_model)
            self.progress.stage("measuring the FP32 baseline")
            reference = _outputs(prepared.path, evals, batch, s.threads)
            fp32_fid = fid.evaluate(metric, reference, reference, labels)
            feed = _timing_feed(evals)
            base_ms, _ = _time_pair(prepared.path, prepared.path, feed, s.threads)
            baseline = {"latency_p50_ms": base_ms, "size_bytes": info.size_bytes, "score": fp32_fid.score}

            ops = info.op_histogram
            recipes = auto_recipes(
                has_matmul=any(ops.get(o) for o in ("MatMul", "Gemm")),
                has_conv=any(ops.get(o) for o in ("Conv", "ConvTranspose")),
                fmt=s.format,
                per_channel=s.per_channel,
                activation_type=s.activation_type,
                reduce_range=s.reduce_range,
                method=s.method,
            )
            if s.exclude_nodes:
                recipes = [r.with_exclusions(s.exclude_nodes, "--exclude-nodes") for r in recipes]
            if not recipes:
                raise QuantizationError(
                    f"no {s.method} recipe applies to this model (no MatMul/Gemm to quantize dynamically)",
                    hint="use --method static",
                )

            ctx = _Ctx(prepared.path, work, calib, evals, labels, metric, budget, reference, fp32_fid, feed, batch)
            # MinMax recipes share one cheap calibration: try them, then mixed precision on the best
            # of them, and only then the histogram calibrations (slow, memory-hungry on big models).
            per_sample = activation_bytes(prepared_model)
            # A third of the time budget is kept for mixed precision, which needs a recipe to start from.
            reserve = s.budget_time / 3 if s.budget_time and s.mixed_precision else 0.0
            for i, recipe in enumerate(recipes):
                self.progress.candidate(i + 1, len(recipes), recipe.name)
                if i > 0 and self.time_left() - reserve < MIN_STEP_SECONDS:
                    self._skip(recipe, "time budget kept for mixed precision")
                    continue
                samples, stride = calibration_plan(recipe, calib.samples, per_sample)
                self._try(
                    recipe, replace(ctx, calib=calib.head(samples), stride=stride), reserve=0.0 if i == 0 else reserve
                )
            if s.mixed_precision and not self._any_in_budget():
                self._mixed_precision(ctx)
            chosen, reason = self._choose(ctx)
            self.progress.stage("writing the result")
            if chosen is not None and chosen.path is not None:
                atomic_write(self.out, chosen.path.read_bytes())
            else:
                atomic_write(self.out, self.model_path.read_bytes())

        report = QuantizeReport(
            model=str(self.model_path),
            output=str(self.out),
            chosen=chosen.recipe.name if chosen else "fp32",
            reason=reason,
            metric=metric.name,
            budget=budget.describe(metric),
            threads=s.threads,
            baseline=baseline,
            candidates=self.results,
            calibration={"source": calib.source, "samples": calib.samples, "synthetic": calib.synthetic},
            eval={"source": evals.source, "samples": evals.samples, "synthetic": evals.synthetic, "labels": s.labels},
            steps=prepared.steps,
            warnings=self.warnings,
            seconds=time.monotonic() - self.started,
        )
        atomic_write(report_path(self.out), _json(report.to_dict()))
        return report

    def _load_data(self, info: ModelInfo) -> tuple[Dataset, Dataset, np.ndarray | None]:
        s = self.s
        given = dict(s.input_shapes)
        kw: dict[str, Any] = {"shapes": given, "preprocessing": s.preprocessing, "seed": s.seed}
        if s.calibration is None:
            self.warnings.append(
                "no calibration data: calibrated on SYNTHETIC random data; accuracy was NOT "
                "measured against real data (pass --calibration and --eval)"
            )
            calib = load_dataset("synthetic", info.inputs, samples=16, role="calibration", **kw)
        else:
            calib = load_dataset(s.calibration, info.inputs, role="calibration", **kw)
            if calib.synthetic:
                self.warnings.append("calibration data is SYNTHETIC: accuracy was NOT measured against real data")
        if s.eval is not None:
            evals = load_dataset(s.eval, info.inputs, role="eval", **{**kw, "seed": s.seed + 1})
        elif not calib.synthetic and calib.samples >= 4:
            # Hold part of the calibration data apart so fidelity is not judged on what calibrated.
            cut = max(1, int(calib.samples * 0.7))
            calib, evals = calib.split(cut)
            self.warnings.append(f"no --eval data: held out {evals.samples} of the calibration samples for eval")
        else:
            evals = load_dataset("synthetic", info.inputs, samples=16, role="eval", **{**kw, "seed": s.seed + 1})
        calib = Dataset({k: v[: s.calibration_samples] for k, v in calib.arrays.items()}, calib.source, calib.synthetic)
        labels = None
        if s.labels:
            labels = load_labels(s.labels, evals.samples)
        if evals.samples > s.eval_samples:
            evals = Dataset({k: v[: s.eval_samples] for k, v in evals.arrays.items()}, evals.source, evals.synthetic)
            if labels is not None:
                labels = labels[: s.eval_samples]
        return calib, evals, labels

    def _any_in_budget(self) -> bool:
        return any(r.verdict == "in budget" for r in self.results)

    def _skip(self, recipe: Recipe, reason: str) -> None:
        result = CandidateResult(recipe, verdict="skipped", reason=reason)
        self.results.append(result)
        self.progress.result(result)

    def _try(self, recipe: Recipe, ctx: _Ctx, reserve: float = 0.0) -> CandidateResult:
        result = CandidateResult(recipe)
        self.results.append(result)
        if self.time_left() <= 0:
            result.verdict, result.reason = "skipped", "time budget spent"
            self.progress.result(result)
            return result
        t0 = time.monotonic()
        try:
            out = ctx.work / f"candidate-{len(self.results)}.onnx"
            left = self.time_left() - reserve
            path = run_limited(
                recipe.name,
                build_candidate,
                recipe,
                ctx.prepared,
                out,
                ctx.calib,
                ctx.work,
                ctx.stride,
                timeout=None if left == float("inf") else max(left, 1.0),
            )
            result.path, result.size_bytes = path, path.stat().st_size
            outputs = _outputs(path, ctx.evals, ctx.batch, self.s.threads)
            result.fidelity = fid.evaluate(ctx.metric, ctx.reference, outputs, ctx.labels)
            _, cand_ms = _time_pair(ctx.prepared, path, ctx.feed, self.s.threads, seconds=1.0)
            base_ms, cand_ms = _time_pair(ctx.prepared, path, ctx.feed, self.s.threads, seconds=1.0)
            result.latency_ms, result.latency_ratio = cand_ms, cand_ms / base_ms
            ok = ctx.budget.passes(ctx.metric, result.fidelity.score, ctx.fp32.score)
            if not ok:
                result.verdict = "over budget"
                result.reason = (
                    f"{ctx.metric.name} {result.fidelity.score:.4g} vs FP32 {ctx.fp32.score:.4g} "
                    f"misses {ctx.budget.describe(ctx.metric)}"
                )
            elif result.latency_ratio >= 1.0:
                result.verdict, result.reason = "slower", f"{result.latency_ratio:.2f}x FP32 latency"
            else:
                result.verdict, result.reason = "in budget", ""
        except SearchTimeout:
            result.verdict, result.reason = "skipped", "stopped at the time budget"
        except (QuantizationError, DataError) as exc:
            result.verdict, result.reason = "failed", exc.one_line()
        except Exception as exc:  # a broken candidate must not end the search
            result.verdict, result.reason = "failed", f"{type(exc).__name__}: {first_line(exc, 200)}"
        result.seconds = time.monotonic() - t0
        self.progress.result(result)
        return result

    def _mixed_precision(self, ctx: _Ctx) -> None:
        """Keep the most sensitive nodes in FP32, more each round, until the budget holds."""
        tried = [
            r
            for r in self.results
            if r.fidelity is not None
            and r.recipe.method == "static"
            and r.path is not None
            and r.latency_ratio is not None
            and r.latency_ratio < 1.0
        ]
        if not tried:
            return
        metric = ctx.metric
        best = max(tried, key=lambda r: r.fidelity.score if metric.higher_is_better else -r.fidelity.score)  # type: ignore[union-attr]
        self.progress.stage(f"ranking nodes by quantization error ({best.recipe.name})")
        try:
            per_sample = activation_bytes(onnx.load(str(ctx.prepared), load_external_data=False))
            samples = max(1, min(4, CALIBRATION_MEMORY // max(1, 2 * per_sample)))
            assert best.path is not None
            ranked = run_limited(
                "per-node error",
                rank_nodes,
                ctx.prepared,
                best.path,
                ctx.calib,
                ctx.work,
                samples,
                timeout=None if self.time_left() == float("inf") else max(self.time_left(), 1.0),
            )
        except Exception as exc:
            self.warnings.append(f"per-node error ranking failed: {type(exc).__name__}: {str(exc)[:200]}")
            return
        names = [n.node for n in ranked]
        # First the model's head (the last compute ops and everything after them) as one subgraph,
        # then the nodes that add the most error, doubling each round.
        head = tuple(tail_nodes(onnx.load(str(ctx.prepared), load_external_data=False).graph, compute_nodes=3))
        rounds = [(head, "the head (last 3 compute ops and after) kept in FP32")]
        k = 1
        while k <= len(names):
            rounds.append((tuple(names[:k]), f"{k} nodes adding the most error kept in FP32"))
            k *= 2
        for nodes, note in rounds:
            if self.time_left() < MIN_STEP_SECONDS:
                return
            recipe = best.recipe.with_exclusions(nodes, note)
            self.progress.candidate(len(self.results) + 1, len(self.results) + 1, recipe.name)
            result = self._try(recipe, ctx)
            if result.verdict == "in budget":
                return
            if result.latency_ratio is not None and result.latency_ratio >= 1.0 and nodes != head:
                return  # keeping more in FP32 only gets slower

    def _choose(self, ctx: _Ctx) -> tuple[CandidateResult | None, str]:
        finalists = sorted((r for r in self.results if r.verdict == "in budget"), key=lambda r: r.latency_ratio or 9.0)[
            :3
        ]
        if not finalists:
            over = [r for r in self.results if r.verdict == "over budget"]
            slower = [r for r in self.results if r.verdict == "slower"]
            if slower and not over:
                return None, "kept FP32: every candidate inside the budget was slower than FP32"
            if over and not slower:
                return None, f"kept FP32: no candidate met {ctx.budget.describe(ctx.metric)}"
            if over or slower:
                return None, (
                    f"kept FP32: candidates were either outside {ctx.budget.describe(ctx.metric)} "
                    "or not faster than FP32"
                )
            return None, "kept FP32: no candidate could be built"
        self.progress.stage("timing the finalists side by side")
        sessions = [make_session(ctx.prepared, threads=self.s.threads)]
        sessions += [make_session(r.path, threads=self.s.threads) for r in finalists]  # type: ignore[arg-type]
        calls: list[Callable[[], object]] = [functools.partial(run, s, ctx.feed) for s in sessions]
        samples = time_interleaved(calls, runs=_runs_for(calls, 3.0), warmup=10)
        base = summarize(samples[0], 1).p50_ms
        for r, smp in zip(finalists, samples[1:], strict=True):
            r.latency_ms = summarize(smp, 1).p50_ms
            r.latency_ratio = r.latency_ms / base
        finalists.sort(key=lambda r: r.latency_ratio or 9.0)
        winner = finalists[0]
        if (winner.latency_ratio or 9.0) > FASTER_MARGIN:
            for r in finalists:
                r.verdict, r.reason = "slower", f"{r.latency_ratio:.2f}x FP32 in the final timing"
            return None, "kept FP32: no in-budget candidate was clearly faster than FP32 in the final timing"
        winner.verdict = "chosen"
        assert winner.fidelity is not None
        return winner, (
            f"fastest candidate inside {ctx.budget.describe(ctx.metric)}: "
            f"{winner.latency_ratio:.2f}x FP32 latency, {ctx.metric.name} {winner.fidelity.score:.4g} "
            f"(FP32 {ctx.fp32.score:.4g})"
        )


def _runs_for(calls: Sequence[Callable[[], object]], seconds: float) -> int:
    t0 = time.perf_counter()
    for c in calls:
        c()
    once = max((time.perf_counter() - t0) / len(calls), 1e-6)
    return int(min(max(seconds / (once * len(calls)), 20), 2000))


@dataclass
class _Ctx:
    prepared: Path
    work: Path
    calib: Dataset
    evals: Dataset
    labels: np.ndarray | None
    metric: fid.Metric
    budget: fid.Budget
    reference: list[list[np.ndarray]]
    fp32: fid.Fidelity
    feed: dict[str, np.ndarray]
    batch: int
    stride: int | None = None


def report_path(out: Path) -> Path:
    return out.with_name(out.name + ".report.json")


def _json(data: dict[str, Any]) -> bytes:
    import json

    return (
        json.dumps(data, indent=2, default=lambda o: float(o) if isinstance(o, np.floating) else str(o)) + "\n"
    ).encode()


def quantize(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: QuantizeSettings | None = None,
    progress: Progress | None = None,
) -> QuantizeReport:
    """Quantize ``model`` into ``out`` (see module docs); returns the report also written to
    ``<out>.report.json``."""
    if settings is not None and settings.threads < 1:
        raise ConfigError("must be at least 1", field="--threads")
    return _Search(Path(model), Path(out), settings or QuantizeSettings(), progress or _Silent()).run()


__all__ = ["CandidateResult", "QuantizeReport", "QuantizeSettings", "quantize", "report_path"]
