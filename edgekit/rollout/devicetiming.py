"""``quantize --timing-group G --app A``: rank the candidates by what devices of the group measured.

After the search (``quantizing``), for each platform built:

1. the candidates inside the accuracy budget (at most ``max_candidates``, best first by this host's
   latency when it timed them, else in the family's order) and the FP32 model are packaged as one
   image each with a layer for that platform only, pushed to ``repository`` (tag
   ``timing-<platform>-<candidate>``) and signed with the release key, so the agents verify them
   as they would a release;
2. ``edgekit.fleet.benching`` asks up to ``per_class`` devices of that platform in the group to time
   them all, interleaved, beside the model they run; each candidate's ratio is to the FP32 build
   timed in the same rounds on the same device (median over devices);
3. each candidate pairs with the FP32 build round by round on each device (the agents send their
   per-round times), the rounds of all devices pooled; the build is the in-budget candidate with the
   lowest median ratio among those *shown* faster than FP32 by the sign test (95 % interval wholly
   under 1.0), else FP32 is kept, and the reason names the test, rounds and interval; the report
   records, for each figure, where it was measured (``latency_source``: devices, build host, not
   measured) and the test (``device_latency.speed``).

The classes present are read from the agents' retained statuses before anything is pushed. A
platform with no device of its class in the group gets nothing pushed, keeps the search's choice, and its report
says so: its latency is the build host's (or, for a platform this host is not, not measured).

It lives in the rollout layer because it joins three below it: the quantize search (optimize),
images (package, push, sign) and the fleet's MQTT (benching).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.oci.fetching import current_platform
from edgekit_agent.oci.reference import parse_reference
from edgekit_agent.oci.registry import RegistryOptions

from edgekit.errors import ConfigError, NoBenchDeviceError
from edgekit.fleet.benching import bench_group, discover_classes
from edgekit.fleet.settings import FleetSettings
from edgekit.fleet.timing import RelativeFigure, relative_to
from edgekit.image.building import PackageSettings, package
from edgekit.image.pushing import push_layout
from edgekit.image.signing import sign_image
from edgekit.optimize.quantizing import IN_BUDGET
from edgekit.optimize.results import CandidateResult, QuantizeReport, report_json, report_path
from edgekit.optimize.writing import atomic_write

__all__ = ["DeviceTimingSettings", "choose_by_devices", "time_on_devices"]

FIXED_CREATED = "2000-01-01T00:00:00Z"  # candidate images are throwaway: reproducible digests


@dataclass(frozen=True)
class DeviceTimingSettings:
    group: str
    app: str
    repository: str               # registry/repository the candidates are pushed to (the agents' registry)
    sign_key: Any                 # the release key (an EC private key): the agents verify with its public half
    fleet: FleetSettings
    registry: RegistryOptions
    per_class: int = 2
    runs: int = 30
    timeout: float = 180.0
    max_candidates: int = 3       # plus the FP32 build: the agents' default bound of 4


def check_repository(repository: str) -> str:
    ref = parse_reference(repository)
    if ref.digest or ref.tag:
        raise ConfigError(f"{repository!r}: name a repository (registry/name), without tag or digest",
                          field="--timing-repo")
    return repository


def choose_by_devices(results: list[CandidateResult], figures: dict[str, RelativeFigure],
                      images: dict[str, str]) -> tuple[CandidateResult | None, str]:
    """Pure: the in-budget candidate fastest on the devices among those *shown* faster than FP32
    there (the paired test's interval wholly under 1.0), and why; None keeps FP32, and the reason
    names the test, its rounds and interval (or that the devices sent no per-round times)."""
    timed = [(figures[images[r.recipe.name]], r) for r in results
             if r.recipe.name in images and images[r.recipe.name] in figures]
    if not timed:
        return None, "no candidate was timed on the devices"
    shown = [(f, r) for f, r in timed if f.faster()]
    if not shown:
        tested = [(f, r) for f, r in timed if f.speed is not None and f.speed.ratio is not None]
        if not tested:
            fig, best = min(timed, key=lambda fr: fr[0].ratio)
            return None, (f"no candidate can be shown faster than FP32 on the devices: {fig.describe_speed()} "
                          f"(best by medians: {best.recipe.name} {fig.ratio:.2f}x over {len(fig.devices)} "
                          "device(s)); FP32 kept")
        fig, best = min(tested, key=lambda fr: _paired(fr[0]))
        return None, (f"no candidate is shown faster than FP32 on the devices (best: {best.recipe.name} "
                      f"{fig.describe_speed()} over {len(fig.paired_devices)} device(s)); FP32 kept")
    fig, best = min(shown, key=lambda fr: _paired(fr[0]))
    return best, (f"fastest inside the budget shown faster than FP32 on {len(fig.paired_devices)} device(s) of "
                  f"the group: {best.recipe.name} {fig.describe_speed()} (ratio of medians {fig.ratio:.2f}x, "
                  f"range over devices {fig.ratio_min:.2f}-{fig.ratio_max:.2f}x)")


def _paired(fig: RelativeFigure) -> float:
    return fig.speed.ratio if fig.speed is not None and fig.speed.ratio is not None else float("inf")


def time_on_devices(model: Path, reports: dict[str, QuantizeReport], settings: DeviceTimingSettings,
                    progress: Callable[[str], None] | None = None) -> dict[str, QuantizeReport]:
    """Time each platform's in-budget candidates on its devices and re-rank (see the module docs).
    ``reports``: platform -> the search's report, its in-budget candidates kept on disk."""
    say = progress or (lambda _text: None)
    check_repository(settings.repository)
    host = current_platform()
    # known before anything is pushed: a class without devices is not packaged for nothing
    present = discover_classes(settings.fleet, group=settings.group, app=settings.app)
    for plat, report in reports.items():
        chosen_before = report.chosen_result
        if plat not in present:
            report.device_timing = _source(plat, host, settings, f"no device of {plat} in group {settings.group}")
            say(f"{plat}: " + report.device_timing["why"])
            continue
        kept = [r for r in report.candidates if r.verdict in IN_BUDGET and r.path is not None and r.path.exists()]
        kept.sort(key=lambda r: (r.latency_ratio is None, r.latency_ratio or 0.0))
        kept = kept[:settings.max_candidates]
        if not kept:
            report.device_timing = _source(plat, host, settings, "no candidate inside the budget to time")
            continue
        say(f"{plat}: pushing {len(kept)} candidate(s) and the FP32 build to {settings.repository}")
        with tempfile.TemporaryDirectory(prefix="edgekit-timing-") as tmp:
            fp32 = _push(model, plat, "fp32", settings, Path(tmp))
            images = {r.recipe.name: _push(r.path, plat, r.recipe.name, settings, Path(tmp))  # type: ignore[arg-type]
                      for r in kept}
        say(f"{plat}: timing on devices of {settings.group}")
        try:
            bench = bench_group(settings.fleet, group=settings.group, app=settings.app,
                                candidates=[fp32, *images.values()], per_class=settings.per_class,
                                runs=settings.runs, timeout=settings.timeout, classes=[plat],
                                on_progress=say)
        except NoBenchDeviceError:
            report.device_timing = _source(plat, host, settings, f"no device of {plat} in group {settings.group}")
            say(f"{plat}: no device of this class in {settings.group}: " + report.device_timing["why"])
            continue
        figures = relative_to(bench.answers, fp32)
        for r in kept:
            fig = figures.get(images[r.recipe.name])
            if fig is not None:
                r.device = {**fig.to_dict(), "platform": plat, "reference": "fp32 build, same rounds"}
        winner, reason = choose_by_devices(kept, figures, images)
        refused = [f"{x.device}: {x.error}" for x in bench.summary.refusals]
        devices = sorted({d for f in figures.values() for d in f.devices})
        report.device_timing = {"source": "devices" if figures else "not measured", "platform": plat,
                                "group": settings.group, "app": settings.app, "devices": devices,
                                "runs": settings.runs, "refused": refused,
                                "why": reason}
        if not figures:
            continue  # nothing measured there: the search's choice stands, its source says so
        for r in report.candidates:
            if r.verdict == "chosen":
                r.verdict = "in budget"
        if winner is None:
            report.chosen, report.reason = "fp32", reason
            atomic_write(Path(report.output), model.read_bytes())
        else:
            winner.verdict = "chosen"
            report.chosen, report.reason = winner.recipe.name, reason
            if winner is not chosen_before:
                assert winner.path is not None
                atomic_write(Path(report.output), winner.path.read_bytes())
        atomic_write(report_path(Path(report.output)), report_json(report.to_dict()))
    for report in reports.values():
        if report.device_timing is not None and report.device_timing["source"] != "devices":
            atomic_write(report_path(Path(report.output)), report_json(report.to_dict()))
    return reports


def _source(plat: str, host: str, settings: DeviceTimingSettings, why: str) -> dict[str, Any]:
    source = "build host" if plat == host else "not measured"
    return {"source": source, "platform": plat, "group": settings.group, "app": settings.app, "devices": [],
            "why": why + (f"; its latency is the build host's ({host})" if plat == host
                          else f"; its latency was not measured (the build host is {host})")}


def _push(path: Path, plat: str, name: str, settings: DeviceTimingSettings, work: Path) -> str:
    slug = re.sub(r"[^a-z0-9_.-]+", "-", f"timing-{plat.replace('/', '-')}-{name}".lower())[:120]
    layout = work / slug
    package(None, PackageSettings(name=slug, version="0", created=FIXED_CREATED, platforms=(plat,),
                                  platform_models={plat: path}), layout)
    pushed = push_layout(layout, parse_reference(f"{settings.repository}:{slug}"), options=settings.registry)
    image = f"{settings.repository}@{pushed.digest}"
    sign_image(parse_reference(image), settings.sign_key, options=settings.registry)
    return image
