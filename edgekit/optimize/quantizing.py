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

This module runs the steps in order against the time budget. What to try, in which order, is
decided in ``planning`` and which candidate wins in ``judging`` (both pure); ``evaluating`` and
``measuring`` build, score and time one candidate; ``results`` holds the report.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import onnx
from edgekit_agent.oci.fetching import current_platform

from edgekit.errors import ConfigError, EdgekitError, QuantizationError, UnsupportedModelError, first_line
from edgekit.optimize import fidelity as fid
from edgekit.optimize.building import equalized_model
from edgekit.optimize.datasets import Dataset, ImagePreprocessing, load_search_data
from edgekit.optimize.evaluating import SearchContext, evaluate_candidate
from edgekit.optimize.graphs import ensure_node_names, tail_nodes
from edgekit.optimize.guarding import run_limited
from edgekit.optimize.inspecting import ModelInfo, inspect_model
from edgekit.optimize.judging import final_choice, finalists, kept_fp32_reason, preferred_choice
from edgekit.optimize.loading import load_model
from edgekit.optimize.measuring import eval_batch_size, model_outputs, time_pair, time_side_by_side, timing_feed
from edgekit.optimize.metric_choice import MetricChoice, choose_metric, generic_metric_warning
from edgekit.optimize.planning import (
    MIN_STEP_SECONDS,
    activation_bytes,
    calibration_plan,
    escalation_base,
    escalation_ends,
    escalation_rounds,
    mixed_precision_reserve,
    nothing_to_quantize,
    ranking_samples,
    search_recipes,
)
from edgekit.optimize.platforms import build_path, family_for, host_cpu_flags
from edgekit.optimize.preparing import prepare
from edgekit.optimize.recipes import Recipe, Technique
from edgekit.optimize.results import CandidateResult, QuantizeReport, report_json, report_path
from edgekit.optimize.sensitivity import rank_nodes
from edgekit.optimize.shapes import Shapes, shapes_to_fix
from edgekit.optimize.subgraphs import KeptSubgraph, kept_subgraphs, unvarying_scalars
from edgekit.optimize.writing import atomic_write, check_output_path

IN_BUDGET = ("chosen", "in budget", "slower")  # verdicts of candidates whose fidelity is inside the budget


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
    # None: auto adds candidates with CLE / bias correction (recipes.auto_recipes); a tuple: these
    # on every static recipe; (): none.
    techniques: tuple[Technique, ...] | None = None
    # A build for another platform (``quantize_for_platforms``): its CPU family's activation types
    # (tried in this order, instead of ``activation_type``), and no timing: this CPU's says nothing there.
    activation_types: tuple[Literal["uint8", "int8"], ...] = ()
    platform: str | None = None  # the platform the build is for (None: this host, unnamed)
    timed: bool = True
    # Where to keep the candidates inside the budget (``--timing-group`` times them on devices);
    # None: they go with the work folder
    keep_candidates: Path | None = None


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



class _Search:
    """One run of the search: the order of the steps and the time budget. What to try and what
    wins is decided in ``planning`` and ``judging``; candidates are measured in ``evaluating``."""

    def __init__(self, model_path: Path, out: Path, settings: QuantizeSettings, progress: Progress) -> None:
        self.model_path, self.out, self.s, self.progress = model_path, out, settings, progress
        self.started = time.monotonic()
        self.warnings: list[str] = []
        self.results: list[CandidateResult] = []
        self.step = "checking the inputs"

    def time_left(self) -> float:
        if self.s.budget_time is None:
            return float("inf")
        return self.s.budget_time - (time.monotonic() - self.started)

    def _timeout(self, reserve: float = 0.0) -> float | None:
        left = self.time_left() - reserve
        return None if left == float("inf") else max(left, 1.0)

    def run(self) -> QuantizeReport:
        s = self.s
        check_output_path(self.out, self.model_path)
        model = load_model(self.model_path)
        info = inspect_model(self.model_path, model)
        metric, budget, choice = self._metric_and_budget(info)

        self.step = "loading data"
        self.progress.stage(self.step)
        calib, evals, labels, warnings = load_search_data(
            info.inputs, calibration=s.calibration, eval=s.eval, labels=s.labels, shapes=s.input_shapes,
            preprocessing=s.preprocessing, seed=s.seed, calibration_samples=s.calibration_samples,
            eval_samples=s.eval_samples,
        )
        self.warnings += warnings
        shapes = shapes_to_fix(info, s.input_shapes, calib)

        with tempfile.TemporaryDirectory(prefix="edgekit-quantize-") as tmp:
            work = Path(tmp)
            self.step = "preparing the model"
            self.progress.stage(self.step)
            prepared = prepare(ensure_node_names(model), shapes, work)
            self.warnings += prepared.warnings
            prepared_model = onnx.load(str(prepared.path))
            fp32_subgraphs = self._with_data_values(kept_subgraphs(prepared_model), calib, evals)
            self.step = "measuring the FP32 baseline"
            ctx, base_ms = self._baseline(prepared.path, prepared_model, work, calib, evals, labels, metric, budget)
            baseline = {"latency_p50_ms": base_ms, "size_bytes": info.size_bytes, "score": ctx.fp32.score}
            if not s.timed:
                self.warnings.append(f"latency not measured on {s.platform}; the device's probe checks it at load")
            unreachable = nothing_to_quantize(prepared_model.graph, fp32_subgraphs)
            chosen: CandidateResult | None = None
            if unreachable is not None:
                reason = unreachable
            else:
                recipes = list(dict.fromkeys(
                    recipe
                    for act in (s.activation_types or (s.activation_type,))
                    for recipe in search_recipes(
                        info.op_histogram, method=s.method, fmt=s.format, per_channel=s.per_channel,
                        activation_type=act, reduce_range=s.reduce_range, exclude_nodes=s.exclude_nodes,
                        techniques=s.techniques,
                    )
                ))
                self.step = "trying candidates"
                self._first_pass(recipes, ctx, activation_bytes(prepared_model))
                if s.mixed_precision and not self._any_in_budget():
                    self._mixed_precision(ctx)
                self.step = "choosing"
                chosen, reason = self._choose(ctx)
            self.step = "writing the result"
            self.progress.stage(self.step)
            if s.keep_candidates is not None:
                self._keep(s.keep_candidates)
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
            metric_settings=metric.options,
            metric_reason=choice.reason,
            threads=s.threads,
            baseline=baseline,
            candidates=self.results,
            calibration={"source": calib.source, "samples": calib.samples, "synthetic": calib.synthetic},
            eval={"source": evals.source, "samples": evals.samples, "synthetic": evals.synthetic, "labels": s.labels},
            steps=prepared.steps,
            warnings=self.warnings,
            fp32_subgraphs=[k.to_dict() for k in fp32_subgraphs],
            fp32_subgraph_lines=[k.line() for k in fp32_subgraphs],
            seconds=time.monotonic() - self.started,
            timed_on=current_platform() if s.timed else "",
            platform=s.platform or "",
        )
        atomic_write(report_path(self.out), report_json(report.to_dict()))
        return report

    def _keep(self, folder: Path) -> None:
        """Copy every candidate inside the budget out of the work folder (its ``path`` follows)."""
        folder.mkdir(parents=True, exist_ok=True)
        for r in self.results:
            if r.path is not None and r.verdict in IN_BUDGET:
                kept = folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', r.recipe.name)}.onnx"
                shutil.copyfile(r.path, kept)
                r.path = kept

    @staticmethod
    def _with_data_values(kept: list[KeptSubgraph], *data: Dataset) -> list[KeptSubgraph]:
        """Name the inputs a kept control-flow node hinges on that never vary in the data: the
        user learns that an export for that value would quantize."""
        names = {n for k in kept for n in k.depends_on}
        if not names:
            return kept
        same = unvarying_scalars((feed for d in data if not d.synthetic for feed in d.batches(1)), names)
        return [
            replace(k, same_in_data=tuple(f"{n}={same[n]}" for n in k.depends_on if n in same)) for k in kept
        ]

    def _metric_and_budget(self, info: ModelInfo) -> tuple[fid.Metric, fid.Budget, MetricChoice]:
        """Refuse what cannot work before any slow step; pick the metric (and say why) and its budget."""
        s = self.s
        if info.quantization != "none":
            raise QuantizationError(
                f"{self.model_path} is already quantized ({info.quantization})", hint="quantize the FP32 model"
            )
        if s.labels and not s.eval and not s.calibration:
            raise ConfigError("--labels needs --eval data to label", field="--labels")
        if s.metric:
            choice = MetricChoice(s.metric, "given with --metric")
            warning = generic_metric_warning(s.metric, info.outputs, info.output_ops)
            if warning:
                self.warnings.append(warning)
        else:
            choice = choose_metric(bool(s.labels), info.outputs, info.metadata, info.output_ops)
        metric = fid.parse_metric(choice.spec)
        budget = fid.parse_budget(s.max_drop or fid.default_budget(metric), metric)
        if metric.needs_labels and not s.labels:
            raise ConfigError("the accuracy metric needs --labels", field="--metric")
        self.progress.stage(f"metric {metric.name}: {choice.reason}")
        return metric, budget, choice

    def _baseline(
        self, prepared: Path, prepared_model: onnx.ModelProto, work: Path, calib: Dataset, evals: Dataset,
        labels: np.ndarray | None, metric: fid.Metric, budget: fid.Budget,
    ) -> tuple[SearchContext, float | None]:
        """FP32's outputs, score and p50 latency (ms; None when not timed): what every candidate is
        measured against."""
        batch = eval_batch_size(prepared_model, evals)
        self.progress.stage("measuring the FP32 baseline")
        reference = model_outputs(prepared, evals, batch, self.s.threads)
        fp32_fid = fid.evaluate(metric, reference, reference, labels)
        feed = timing_feed(evals)
        base_ms = time_pair(prepared, prepared, feed, self.s.threads)[0] if self.s.timed else None
        ctx = SearchContext(prepared, work, calib, evals, labels, metric, budget, reference, fp32_fid, feed, batch)
        return ctx, base_ms

    def _first_pass(self, recipes: list[Recipe], ctx: SearchContext, per_sample: int) -> None:
        """Each recipe in turn, while the time kept for mixed precision allows.

        MinMax recipes share one cheap calibration: they come first, then mixed precision on the
        best of them, and only then the histogram calibrations (slow, memory-hungry on big models).
        """
        reserve = mixed_precision_reserve(self.s.budget_time, self.s.mixed_precision)
        for i, recipe in enumerate(recipes):
            self.progress.candidate(i + 1, len(recipes), recipe.name)
            if i > 0 and self.time_left() - reserve < MIN_STEP_SECONDS:
                self._skip(recipe, "time budget kept for mixed precision")
                continue
            if not self.s.timed and self._any_in_budget():
                # untimed, the first in-budget recipe of the family's order wins: the rest cannot
                self._skip(recipe, f"a recipe {self.s.platform} prefers already meets the budget")
                continue
            samples, stride = calibration_plan(recipe, ctx.calib.samples, per_sample)
            calibrated = replace(ctx, calib=ctx.calib.head(samples), stride=stride)
            self._try(recipe, calibrated, reserve=0.0 if i == 0 else reserve)

    def _any_in_budget(self) -> bool:
        return any(r.verdict == "in budget" for r in self.results)

    def _skip(self, recipe: Recipe, reason: str) -> None:
        result = CandidateResult(recipe, verdict="skipped", reason=reason)
        self.results.append(result)
        self.progress.result(result)

    def _try(self, recipe: Recipe, ctx: SearchContext, reserve: float = 0.0) -> CandidateResult:
        result = CandidateResult(recipe)
        self.results.append(result)
        if self.time_left() <= 0:
            result.verdict, result.reason = "skipped", "time budget spent"
            self.progress.result(result)
            return result
        t0 = time.monotonic()
        out = ctx.work / f"candidate-{len(self.results)}.onnx"
        evaluate_candidate(result, ctx, out, threads=self.s.threads, timeout=self._timeout(reserve),
                           timed=self.s.timed)
        result.seconds = time.monotonic() - t0
        self.progress.result(result)
        return result

    def _mixed_precision(self, ctx: SearchContext) -> None:
        """Keep the most sensitive nodes in FP32, more each round, until the budget holds."""
        best = escalation_base(self.results, ctx.metric.higher_is_better, timed=self.s.timed)
        if best is None:
            return
        self.progress.stage(f"ranking nodes by quantization error ({best.recipe.name})")
        try:
            samples = ranking_samples(activation_bytes(onnx.load(str(ctx.prepared), load_external_data=False)))
            assert best.path is not None
            # compared with the FP32 model it was quantized from: an equalized one has other tensors
            source = equalized_model(ctx.prepared, ctx.work) if "cle" in best.recipe.techniques else ctx.prepared
            ranked = run_limited(
                "per-node error", rank_nodes, source, best.path, ctx.calib, ctx.work, samples,
                timeout=self._timeout(),
            )
        except Exception as exc:
            self.warnings.append(f"per-node error ranking failed: {type(exc).__name__}: {str(exc)[:200]}")
            return
        head = tuple(tail_nodes(onnx.load(str(ctx.prepared), load_external_data=False).graph, compute_nodes=3))
        for nodes, note in escalation_rounds(head, [n.node for n in ranked]):
            if self.time_left() < MIN_STEP_SECONDS:
                return
            recipe = best.recipe.with_exclusions(nodes, note)
            self.progress.candidate(len(self.results) + 1, len(self.results) + 1, recipe.name)
            if escalation_ends(self._try(recipe, ctx), nodes, head):
                return

    def _choose(self, ctx: SearchContext) -> tuple[CandidateResult | None, str]:
        if not self.s.timed:
            winner, reason = preferred_choice(self.results, ctx.metric, ctx.budget, ctx.fp32.score,
                                              self.s.platform or "the target")
            if winner is not None:
                winner.verdict = "chosen"
            return winner, reason
        timed = finalists(self.results)
        if not timed:
            return None, kept_fp32_reason(self.results, ctx.metric, ctx.budget)
        self.progress.stage("timing the finalists side by side")
        paths = [r.path for r in timed if r.path is not None]  # an in-budget candidate was built
        _base_ms, cand_ms, speeds = time_side_by_side(ctx.prepared, paths, ctx.feed, self.s.threads)
        for r, ms, speed in zip(timed, cand_ms, speeds, strict=True):
            # the ratio is the paired one (median of per-run ratios), the p50 stays as measured
            r.latency_ms, r.speed = ms, speed
            r.latency_ratio = speed.ratio
        winner, reason = final_choice(timed, ctx.metric, ctx.budget, ctx.fp32.score)
        if winner is None:
            for r in timed:
                r.verdict, r.reason = "slower", f"{r.speed.describe() if r.speed else '?'} FP32 in the final timing"
        else:
            winner.verdict = "chosen"
        return winner, reason


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
    search = _Search(Path(model), Path(out), settings or QuantizeSettings(), progress or _Silent())
    try:
        return search.run()
    except (EdgekitError, KeyboardInterrupt):
        raise
    except Exception as exc:  # whatever a model brings, the user gets one line, not a traceback
        raise UnsupportedModelError(
            f"cannot quantize {model} while {search.step}: {type(exc).__name__}: {first_line(exc, 300)}"
        ) from exc


def quantize_for_platforms(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    platforms: tuple[str, ...],
    settings: QuantizeSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, QuantizeReport]:
    """A build per platform: ``out.onnx`` -> ``out.linux-amd64.onnx``, ``out.linux-arm64.onnx`` (and
    their reports), each from its CPU family's recipes (``platforms.family_for``). This host's
    platform is judged and timed as ``quantize`` does; another's candidates are checked for
    fidelity with this host's onnxruntime but not timed, and the first in budget in the family's
    order is its build. ``settings.budget_time`` applies to each platform."""
    base = settings or QuantizeSettings()
    host, flags = current_platform(), host_cpu_flags()
    families = {plat: family_for(plat, host_platform=host, host_flags=flags) for plat in platforms}
    reports: dict[str, QuantizeReport] = {}
    for plat, family in families.items():
        if progress is not None:
            progress.stage(f"{plat} ({family.name}): {family.why}")
        reports[plat] = quantize(model, build_path(Path(out), plat), replace(
            base, activation_types=family.activation_types, reduce_range=family.reduce_range,
            platform=plat, timed=plat == host), progress)
    return reports


__all__ = ["CandidateResult", "QuantizeReport", "QuantizeSettings", "quantize", "quantize_for_platforms",
           "report_path"]
