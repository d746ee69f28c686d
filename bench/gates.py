"""Monte Carlo of the rollout gates: the real judge (``edgekit.rollout.gating.judge`` with a real
``GatePolicy``) on simulated canaries, to measure false rollbacks, detections and time to detect.

    .venv/bin/python bench/gates.py [--runs 10000] [--quick] [--workers 2] [--seed 1]

Cells: traffic 0.1, 1, 10, 100 inferences/s per device x canaries of 1, 5, 20 devices x faults:

- healthy: error rate half the threshold, latency +5%;
- bad: error rate 3x the threshold, latency +50% (p95 too);
- quietly wrong: no errors, top-1 agreement 0.9 — nothing these gates see; only shadow
  evaluation (``push --shadow-first``) can catch it.

Each run: every device reports every ``--interval`` s (default 10) the inferences of that period
(Poisson), its errors (binomial) and its latencies (lognormal, binned into the agent's
``LatencyHistogram``). A control group of ``--control`` healthy devices on the old model reports
over the same window. The judge is called at every report tick with the cumulative window, as
the engine does, until it advances or rolls back (bake 2 min, wave timeout 10 min, threshold 1%,
p95 regression gate 20% against the control group).

The shadow wave (a second table) runs the real shadow judge
(``edgekit.rollout.shadowing.judge_shadow`` with the default ``ShadowPolicy``: top-1 agreement ≥
0.98 by SPRT at 99% confidence, ≥ 200 samples, a share ``ratio`` of live requests, 10 min
timeout) for each cell: the canary's devices run the candidate beside the served model on
``ratio`` of their requests (Poisson), the candidate fails some of them (binomial: the fault's
error rate) and agrees with the served model on each of the others with the fault's agreement
(0.995 for healthy and bad, 0.9 for quietly wrong). The judge is called at every report tick with
the pooled cumulative counts until it passes or fails. Columns: healthy candidates wrongly
stopped on evidence, stopped at the timeout for want of samples or evidence, and passed; bad
candidates stopped in the shadow wave by their errors (the others meet the normal waves' gates,
above); quietly wrong ones stopped before any device switches (on
evidence or at the timeout), missed, and the median and p95 time to stop.

Columns of the normal waves: false rollbacks (fail verdicts on healthy canaries), inconclusive at the timeout (rolled
back by ``--inconclusive fail``, counted apart), detections before the timeout (bad canaries
failed on evidence), median and p95 time to detect, and whether the traffic can detect a 3x
error rate in principle: ``canary x traffic x timeout`` reaches the samples the sequential test
needs to fail a 3x rate at the policy's confidence and power (``evidence.sprt_detection_samples``;
a fixed-sample test judged once would need fewer, but is not valid when judged at every tick).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from edgekit_agent.protocol.histograms import GAMMA, LatencyHistogram  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgekit.rollout.evidence import detection_samples, sprt_detection_samples  # noqa: E402
from edgekit.rollout.gating import Elapsed, KubeFigures, TelemetryFigures, judge  # noqa: E402
from edgekit.rollout.shadowing import ShadowFigures, ShadowPolicy, ShadowVerdict, judge_shadow  # noqa: E402
from edgekit.rollout.strategy import GatePolicy  # noqa: E402

TRAFFIC = (0.1, 1.0, 10.0, 100.0)
CANARIES = (1, 5, 20)
FAULTS = ("healthy", "bad")
SHADOW_FAULTS = ("healthy", "bad", "quietly wrong")
# per shadow fault: the candidate's error rate on live inputs, and its top-1 agreement
THRESHOLD = 0.01
SHADOW_BEHAVIOUR = {"healthy": (THRESHOLD / 2, 0.995), "bad": (3 * THRESHOLD, 0.995), "quietly wrong": (0.0, 0.9)}
MEDIAN_MS, SIGMA = 20.0, 0.4


@dataclass(frozen=True)
class Cell:
    fault: str
    rate: float       # inferences/s per device
    canary: int
    runs: int
    seed: int
    interval_s: float
    bake_s: float
    timeout_s: float
    control: int
    latency: bool


@dataclass(frozen=True)
class Result:
    cell: Cell
    passed: int
    failed: int                  # rolled back on evidence (a fail verdict)
    inconclusive: int            # rolled back at the timeout for want of evidence
    times: tuple[float, ...]     # time of each fail verdict
    judge_calls: int
    seconds: float


def policy(timeout_s: float, latency: bool) -> GatePolicy:
    return GatePolicy(max_error_rate=THRESHOLD, max_p95_regression=0.2 if latency else None, min_reporting=0.9,
                      wave_timeout_s=timeout_s, baseline="control")


def _bucket_probs(scale: float) -> tuple[int, np.ndarray]:
    """Bucket offset and probabilities of a lognormal latency (median MEDIAN_MS * scale)."""
    mu = math.log(MEDIAN_MS * scale)
    lo = math.floor((mu - 4.5 * SIGMA) / math.log(GAMMA))
    hi = math.ceil((mu + 4.5 * SIGMA) / math.log(GAMMA))
    edges = np.arange(lo - 1, hi + 1) * math.log(GAMMA)
    cdf = 0.5 * (1 + np.vectorize(math.erf)((edges - mu) / (SIGMA * math.sqrt(2))))
    probs = np.diff(cdf)
    return lo, probs / probs.sum()


def _figures(expected: int, n: int, e: int, hist: LatencyHistogram | None) -> TelemetryFigures:
    return TelemetryFigures(expected=expected, reported=expected, on_digest=expected, inferences=n, errors=e,
                            error_rate=e / n if n else None, latency_hist=hist)


def run_cell(cell: Cell) -> Result:
    started = time.perf_counter()
    rng = np.random.default_rng([cell.seed, int(cell.rate * 10), cell.canary, FAULTS.index(cell.fault)])
    pol = policy(cell.timeout_s, cell.latency)
    ticks = math.ceil(cell.timeout_s / cell.interval_s)
    p_wave = THRESHOLD / 2 if cell.fault == "healthy" else 3 * THRESHOLD
    p_ctl = THRESHOLD / 2
    lo_c, probs_c = _bucket_probs(1.0)
    lo_w, probs_w = _bucket_probs(1.05 if cell.fault == "healthy" else 1.5)
    kube = KubeFigures(cell.canary, cell.canary)
    passed = failed = inconclusive = calls = 0
    times: list[float] = []
    per_tick_w = cell.rate * cell.interval_s * cell.canary
    per_tick_c = cell.rate * cell.interval_s * cell.control
    for _ in range(cell.runs):
        nw = rng.poisson(per_tick_w, ticks)
        nc = rng.poisson(per_tick_c, ticks)
        ew, ec = rng.binomial(nw, p_wave).cumsum(), rng.binomial(nc, p_ctl).cumsum()
        cw, cc = nw.cumsum(), nc.cumsum()
        if cell.latency:
            hw = rng.multinomial(nw, probs_w).cumsum(axis=0)
            hc = rng.multinomial(nc, probs_c).cumsum(axis=0)
        verdict = None
        for t in range(ticks):
            now = (t + 1) * cell.interval_s
            wave_hist = ctl_hist = None
            if cell.latency:
                wave_hist = LatencyHistogram(lo_w, tuple(hw[t].tolist()))
                ctl_hist = LatencyHistogram(lo_c, tuple(hc[t].tolist()))
            verdict = judge(pol, bake_s=cell.bake_s, auto_promote=True, kube=kube,
                            tele=_figures(cell.canary, int(cw[t]), int(ew[t]), wave_hist), baseline=None,
                            elapsed=Elapsed(now, now),
                            control=_figures(cell.control, int(cc[t]), int(ec[t]), ctl_hist), previous=verdict)
            calls += 1
            if verdict.decision != "hold":
                break
        assert verdict is not None
        if verdict.decision == "advance":
            passed += 1
        elif "inconclusive" in verdict.reason:
            inconclusive += 1
        else:
            failed += 1
            times.append(now)
    return Result(cell, passed, failed, inconclusive, tuple(times), calls, time.perf_counter() - started)


@dataclass(frozen=True)
class ShadowCell:
    fault: str
    rate: float
    canary: int
    runs: int
    seed: int
    interval_s: float


@dataclass(frozen=True)
class ShadowResult:
    cell: ShadowCell
    passed: int
    stopped: int                 # failed on evidence
    timed_out: int               # failed at the shadow timeout, undecided
    times: tuple[float, ...]     # time of each fail verdict (evidence or timeout)
    judge_calls: int
    seconds: float


def run_shadow_cell(cell: ShadowCell) -> ShadowResult:
    """The shadow wave of one cell: the real ``judge_shadow`` at every report tick. Verdicts depend
    only on the pooled counts and on whether the timeout has come, so they are remembered per
    state: many runs of a low-traffic cell reach the same counts."""
    started = time.perf_counter()
    rng = np.random.default_rng([cell.seed, int(cell.rate * 10), cell.canary, SHADOW_FAULTS.index(cell.fault), 7])
    pol = ShadowPolicy()
    ticks = math.ceil(pol.timeout_s / cell.interval_s)
    p_err, p_agree = SHADOW_BEHAVIOUR[cell.fault]
    tries = rng.poisson(cell.rate * cell.interval_s * cell.canary * pol.ratio, (cell.runs, ticks))
    errors = rng.binomial(tries, p_err)
    agree = rng.binomial(tries - errors, p_agree).cumsum(axis=1)
    samples, errors = (tries - errors).cumsum(axis=1), errors.cumsum(axis=1)
    seen: dict[tuple[int, int, int, bool], ShadowVerdict] = {}
    passed = stopped = timed_out = calls = 0
    times: list[float] = []
    for run in range(cell.runs):
        verdict: ShadowVerdict | None = None
        for t in range(ticks):
            now = (t + 1) * cell.interval_s
            key = (int(samples[run, t]), int(agree[run, t]), int(errors[run, t]), now >= pol.timeout_s)
            verdict = seen.get(key)
            if verdict is None:
                figures = ShadowFigures(cell.canary, cell.canary, key[0], key[1], errors=key[2])
                verdict = seen[key] = judge_shadow(pol, figures, now)
                calls += 1
            if verdict.decision != "hold":
                break
        assert verdict is not None
        if verdict.decision == "pass":
            passed += 1
            continue
        times.append(now)
        if verdict.reason.startswith(("shadow failed", "the candidate failed")):
            stopped += 1
        else:
            timed_out += 1
    return ShadowResult(cell, passed, stopped, timed_out, tuple(times), calls, time.perf_counter() - started)


def _run(cell: Cell | ShadowCell) -> Result | ShadowResult:
    return run_cell(cell) if isinstance(cell, Cell) else run_shadow_cell(cell)


def _ttd(times: Sequence[float]) -> tuple[str, str]:
    if not times:
        return "-", "-"
    arr = np.array(times)
    return f"{np.median(arr):g}s", f"{np.percentile(arr, 95):g}s"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000, help="runs per cell [10000]")
    parser.add_argument("--quick", action="store_true", help="500 runs per cell")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between reports [10]")
    parser.add_argument("--bake", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="wave timeout, s [600]")
    parser.add_argument("--control", type=int, default=20, help="healthy control devices [20]")
    parser.add_argument("--no-latency", action="store_true", help="judge the error rate alone")
    args = parser.parse_args(argv)
    runs = 500 if args.quick else args.runs
    cells = [Cell(f, r, c, runs, args.seed, args.interval, args.bake, args.timeout, args.control,
                  not args.no_latency) for f in FAULTS for r in TRAFFIC for c in CANARIES]
    con = Console(width=200)
    pol = policy(args.timeout, not args.no_latency)
    need = sprt_detection_samples(THRESHOLD, alpha=pol.alpha, power=pol.power)
    fixed = detection_samples(THRESHOLD, alpha=pol.alpha, power=pol.power)
    con.print(f"gates: error rate ≤ {THRESHOLD:.0%} (SPRT, {pol.confidence:.0%} confidence, {pol.power:.0%} power)"
              + ("" if args.no_latency else ", p95 regression ≤ 20% vs control")
              + f"; bake {args.bake:g}s, wave timeout {args.timeout:g}s, reports every {args.interval:g}s, "
              f"control {args.control} healthy devices; {runs} runs per cell, {args.workers} workers")
    shadow_cells = [ShadowCell(f, r, c, runs, args.seed, args.interval)
                    for f in SHADOW_FAULTS for r in TRAFFIC for c in CANARIES]
    started = time.perf_counter()
    results: list[Result] = []
    shadow_results: list[ShadowResult] = []
    todo: list[Cell | ShadowCell] = [*cells, *shadow_cells]
    with multiprocessing.Pool(args.workers) as pool:
        # one line per cell as it ends, so a long run shows its progress
        for done, r in enumerate(pool.imap_unordered(_run, todo), 1):
            if isinstance(r, Result):
                results.append(r)
                line = f"passed {r.passed}, failed {r.failed}, inconclusive {r.inconclusive}"
            else:
                shadow_results.append(r)
                line = f"shadow: passed {r.passed}, stopped {r.stopped}, timed out {r.timed_out}"
            c = r.cell
            print(f"[{done}/{len(todo)}] {c.fault} {c.rate:g}/s x {c.canary}: {line} ({r.seconds:.0f}s)",
                  file=sys.stderr, flush=True)
    by = {(r.cell.fault, r.cell.rate, r.cell.canary): r for r in results}
    table = Table(title=f"gates Monte Carlo: {runs} runs per cell", title_justify="left")
    for col in ("inf/s/dev", "canary", "in principle", "healthy: false rollback", "inconclusive@timeout",
                "passed", "bad: detected", "inconclusive@timeout", "passed (missed)", "TTD median", "TTD p95"):
        table.add_column(col, justify="right")
    for rate in TRAFFIC:
        for canary in CANARIES:
            h, b = by[("healthy", rate, canary)], by[("bad", rate, canary)]
            reach = canary * rate * args.timeout
            principle = f"{'yes' if reach >= need else 'no'} ({reach:g}/{need})"
            table.add_row(f"{rate:g}", str(canary), principle, _pct(h.failed, runs), _pct(h.inconclusive, runs),
                          _pct(h.passed, runs), _pct(b.failed, runs), _pct(b.inconclusive, runs),
                          _pct(b.passed, runs), *_ttd(b.times))
    con.print(table)
    con.print("quietly wrong (0 errors, agreement 0.9): errors and latency look healthy to these gates; "
              "the shadow wave below (push --shadow-first) is what stops it")
    sp = ShadowPolicy()
    sby = {(r.cell.fault, r.cell.rate, r.cell.canary): r for r in shadow_results}
    stable = Table(title=f"shadow wave first (push --shadow-first, defaults): {runs} runs per cell",
                   title_justify="left")
    for col in ("inf/s/dev", "canary", "samples by timeout", "healthy: wrongly stopped", "timed out", "passed",
                "bad: stopped in shadow", "quietly wrong: stopped", "on evidence", "at timeout", "passed (missed)",
                "TTS median", "TTS p95"):
        stable.add_column(col, justify="right")
    for rate in TRAFFIC:
        for canary in CANARIES:
            sh, sb, sq = (sby[(f, rate, canary)] for f in SHADOW_FAULTS)
            reach = canary * rate * sp.ratio * sp.timeout_s
            stable.add_row(f"{rate:g}", str(canary), f"{'yes' if reach >= sp.min_samples else 'no'} "
                           f"({reach:g}/{sp.min_samples})", _pct(sh.stopped, runs), _pct(sh.timed_out, runs),
                           _pct(sh.passed, runs), _pct(sb.stopped + sb.timed_out, runs),
                           _pct(sq.stopped + sq.timed_out, runs), _pct(sq.stopped, runs), _pct(sq.timed_out, runs),
                           _pct(sq.passed, runs), *_ttd(sq.times))
    con.print(stable)
    con.print(f"shadow: {sp.describe()}; the candidate errs {THRESHOLD / 2:.1%} (healthy), {3 * THRESHOLD:.0%} "
              f"(bad), 0 (quietly wrong), and agrees 0.995 (healthy, bad) or 0.9 (quietly wrong); a shadow "
              f"that fails, on evidence or at its timeout, stops the rollout before any device switches")
    calls = sum(r.judge_calls for r in results)
    shadow_calls = sum(r.judge_calls for r in shadow_results)
    con.print(f"{calls} judge calls and {shadow_calls} distinct shadow judge calls in "
              f"{time.perf_counter() - started:.0f}s wall "
              f"({sum(r.seconds for r in results) + sum(r.seconds for r in shadow_results):.0f}s of worker time)")
    con.print(f"detectable in principle: canary x traffic x timeout ≥ {need} inferences, where the sequential "
              f"test (valid at every look) fails {3 * THRESHOLD:.0%} against {THRESHOLD:.0%} at "
              f"{pol.confidence:.0%} confidence with {pol.power:.0%} power; a fixed-sample test judged once "
              f"would need {fixed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
