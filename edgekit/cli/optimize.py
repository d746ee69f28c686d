"""``edgekit inspect``, ``bench`` and ``quantize``."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgekit.cli._output import console, emit_json, output_option
from edgekit.errors import ConfigError

if TYPE_CHECKING:
    from edgekit.optimize.quantizing import CandidateResult, QuantizeReport
    from edgekit.optimize.recipes import Technique
    from edgekit.optimize.speedup import PairedRatio

# The optimize modules load onnx and onnxruntime (over half a second); each command imports what
# it runs, so `edgekit --help` and the other areas' commands do not pay for them.

input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=D1,D2,...",
    help="Fix an input's shape (symbolic dims such as batch or image size). Repeatable.",
)


F = TypeVar("F", bound=Callable[..., Any])


def device_broker_options(func: F) -> F:
    """The broker flags of ``bench --group`` and ``quantize --timing-group`` (as ``edgekit fleet``'s;
    also ``EDGEKIT_FLEET_*``)."""
    options = [
        click.option("--broker", "brokers", multiple=True, metavar="URL",
                     help="With a group: mqtt://host[:port] or mqtts://host[:port] of the fleet's broker "
                          "[default: mqtt://127.0.0.1:1883]."),
        click.option("--topic-root", default=None, help="With a group: topic root [default: edgekit/v1]."),
        click.option("--mqtt-username", "username", default=None, help="With a group: MQTT user name."),
        click.option("--mqtt-password-file", "password_file", type=click.Path(dir_okay=False), default=None,
                     help="With a group: file holding the MQTT password."),
        click.option("--mqtt-ca-file", "ca_file", type=click.Path(dir_okay=False), default=None,
                     help="With a group: CA bundle for mqtts://."),
        click.option("--mqtt-cert-file", "cert_file", type=click.Path(dir_okay=False), default=None,
                     help="With a group: MQTT client certificate."),
        click.option("--mqtt-key-file", "key_file", type=click.Path(dir_okay=False), default=None,
                     help="With a group: MQTT client certificate key."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _fleet_settings(broker: dict[str, Any]) -> Any:
    from edgekit.fleet.settings import load_fleet_settings

    overrides = {"brokers": tuple(broker.get("brokers") or ()) or None, "topic_root": broker.get("topic_root"),
                 "mqtt_username": broker.get("username"), "mqtt_password_file": broker.get("password_file"),
                 "mqtt_ca_file": broker.get("ca_file"), "mqtt_cert_file": broker.get("cert_file"),
                 "mqtt_key_file": broker.get("key_file")}
    return load_fleet_settings(None, overrides=overrides)


def _candidate_platforms(images: tuple[str, ...]) -> list[str]:
    """The platforms the candidates' images have layers for (registry settings: ``EDGEKIT_REGISTRY_*``)."""
    from edgekit.image.options import load_registry_settings
    from edgekit.image.showing import show_image

    options = load_registry_settings().to_options()
    found: set[str] = set()
    for image in images:
        found.update(show_image(image, options=options).platforms)
    return sorted(found)


def _bench_devices(images: tuple[str, ...], *, group: str, app: str, per_class: int, runs: int, warmup: int | None,
                   timeout: float, platforms: str | None, output: str, broker: dict[str, Any]) -> None:
    from edgekit.fleet.benching import bench_group, check_candidates, raise_for_summary
    from edgekit.optimize.platforms import parse_target_platforms

    check_candidates(images)
    expected = list(parse_target_platforms(platforms)) if platforms else _candidate_platforms(images)
    con = console(stderr=True)
    result = bench_group(_fleet_settings(broker), group=group, app=app, candidates=images, per_class=per_class,
                         runs=runs, warmup=5 if warmup is None else warmup, timeout=timeout,
                         expected_platforms=expected,
                         on_progress=(lambda text: con.print(f"… {escape(text)}")) if output != "json" else None)
    if output == "json":
        emit_json(result.to_dict())
    else:
        _print_device_bench(result)
    raise_for_summary(result)


def _print_device_bench(result: Any) -> None:
    s = result.summary
    table = Table(title=f"timed on devices of {result.group} (app {result.app}), vs the model they run",
                  title_justify="left")
    for col in ("class", "candidate", "median ms", "p90 ms", "ratio", "95% CI", "rounds", "ratio range", "n",
                "devices"):
        table.add_column(col, justify="left" if col in ("class", "candidate", "devices") else "right")
    for f in s.figures:
        spread = f"{f.ratio_spread[0]:.2f}-{f.ratio_spread[1]:.2f}" if f.ratio_spread else "-"
        sp = f.speed
        ci = (f"{sp.low:.2f}-{sp.high:.2f}x" if sp is not None and sp.low is not None and sp.high is not None
              else "too few" if sp is not None else "unknown")
        table.add_row(escape(f.platform), escape(_short_image(f.image)), f"{f.median_ms:.3f}", f"{f.p90_ms:.3f}",
                      f"{f.ratio:.2f}x" if f.ratio is not None else "-", ci, str(sp.rounds) if sp else "-", spread,
                      str(f.n), escape(", ".join(f.devices)))
    console().print(table)
    if s.figures:
        console().print("ratio: median over devices of each one's median ratio to the running model; 95% CI: "
                        "sign test on the per-round ratios, paired within each device and pooled over the "
                        "class (unknown: the devices sent no per-round times)", style="dim")
    err = console(stderr=True)
    for plat in s.without_devices:
        err.print(f"[bold yellow]no device:[/] no device of {escape(plat)} in group {escape(result.group)} "
                  "answered: that class was not timed")
    for r in s.refusals:
        err.print(f"[bold red]refused:[/] {escape(r.device)} ({escape(r.platform)}) {escape(_short_image(r.image))}: "
                  f"{escape(r.error)}: {escape(r.detail)}")
    for device in s.unanswered:
        err.print(f"[bold yellow]no answer:[/] {escape(device)}")
    for device in s.busy:
        err.print(f"[bold yellow]busy:[/] {escape(device)} was running another bench")
    for device in s.truncated:
        err.print(f"[bold yellow]cut short:[/] {escape(device)} ran out of time (fewer runs)")


def _short_image(image: str) -> str:
    repo, _, digest = image.rpartition("@")
    return f"{repo.rsplit('/', 1)[-1]}@{digest[:19]}" if repo else image


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@output_option
def inspect_cmd(model: Path, output: str) -> None:
    """Show what an ONNX model takes and gives, how big it is and whether it is quantized.

    \b
    Examples:
      edgekit inspect models/digits/digits.onnx
      edgekit inspect model.onnx --output json | jq .inputs
    """
    from edgekit.optimize.inspecting import inspect_model

    info = inspect_model(model)
    if output == "json":
        emit_json(info.to_dict())
        return
    con = console()
    con.print(
        f"[bold]{escape(info.path)}[/]  {_size(info.size_bytes)}, {info.parameters:,} parameters, {info.nodes} nodes"
    )
    con.print(
        f"IR {info.ir_version}, opset {info.opset}"
        + (
            f" ({', '.join(f'{d} {v}' for d, v in info.opsets.items() if d != 'ai.onnx')})"
            if len(info.opsets) > 1
            else ""
        )
        + f", producer {info.producer or '?'}, quantization: {info.quantization}"
    )
    if info.external_data:
        con.print(f"external data: {', '.join(info.external_data)}")
    if info.metadata:
        # Values can be whole dictionaries (an OCR model's characters): long ones by their size only.
        con.print("metadata: " + escape(", ".join(
            f"{k}={v}" if len(v) <= 40 and "\n" not in v else f"{k} ({len(v.splitlines())} lines)"
            for k, v in info.metadata.items()
        )))
    table = Table(title="inputs and outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        table.add_column(col)
    for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
        for t in tensors:
            table.add_row(kind, escape(t.name), t.dtype, escape(t.shape_text()))
    con.print(table)
    ops = Table(title="operators", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in info.op_histogram.items():
        ops.add_row(op, str(n))
    con.print(ops)


@click.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--runs", default=None, type=click.IntRange(1), help="Timed runs per model [200; on devices: 50].")
@click.option("--warmup", default=None, type=click.IntRange(0), help="Untimed runs first [20; on devices: 5].")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="intra-op threads.")
@click.option(
    "--batch", default=1, show_default=True, type=click.IntRange(1), help="Batch size for a symbolic batch dim."
)
@input_shape_option
@click.option("--data", type=click.Path(path_type=Path), help="Inputs from .npz/.npy/images instead of random.")
@click.option("--spinning/--no-spinning", default=None, help="onnxruntime thread spinning (default: its own).")
@click.option("--group", "-g", default=None,
              help="Time the candidate IMAGES (by digest) on devices of this group instead, beside the model "
                   "they run.")
@click.option("--app", default=None, help="With --group: the app whose agents time them.")
@click.option("--devices", "per_class", default=2, show_default=True, type=click.IntRange(1, 50),
              help="With --group: devices asked per device class (platform).")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(5, 3600),
              help="With --group: seconds to wait for the devices' results.")
@click.option("--platform", "platforms", metavar="OS/ARCH,...",
              help="With --group: the device classes the result must cover [default: the candidates' platforms, "
                   "read from the registry].")
@device_broker_options
@output_option
def bench_cmd(
    models: tuple[str, ...],
    runs: int | None,
    warmup: int | None,
    threads: int,
    batch: int,
    input_shapes: tuple[str, ...],
    data: Path | None,
    spinning: bool | None,
    group: str | None,
    app: str | None,
    per_class: int,
    timeout: float,
    platforms: str | None,
    output: str,
    **broker: Any,
) -> None:
    """Measure latency (p50/p95/p99) and throughput; several models are timed interleaved on the
    same inputs and compared with the first.

    With --group G --app A, the arguments are candidate images pinned by digest, timed on a few
    devices of each class of the group (--devices per class) beside the model they run, without
    serving them: the agents fetch and verify each like a model to serve (their release key),
    time it interleaved with the running model (one thread, a quarter of one core at most) and
    answer over MQTT. The table gives, per device class and candidate, the median, the ratio to
    the running model with its 95% interval (sign test on the per-round ratios, paired within
    each device) and the rounds and runs behind it; a class of the candidates with no device to
    ask is named.

    \b
    Examples:
      edgekit bench model.onnx
      edgekit bench model.onnx model.int8.onnx --threads 2 --runs 500
      edgekit bench det.onnx --input-shape x=1,3,640,640
      edgekit bench --group cameras --app det --broker mqtt://broker:1883 \\
          registry:5000/models/det@sha256:3f1c... registry:5000/models/det@sha256:9ab0...
    """
    if group is not None or app is not None:
        if group is None or app is None:
            raise ConfigError("--group and --app go together", field="--app" if group is None else "--group")
        _bench_devices(models, group=group, app=app, per_class=per_class, runs=runs or 50, warmup=warmup,
                       timeout=timeout, platforms=platforms, output=output, broker=broker)
        return
    runs = runs or 200
    warmup = 20 if warmup is None else warmup
    paths = [Path(m) for m in models]
    from edgekit.optimize.benchmarking import bench_side_by_side
    from edgekit.optimize.shapes import parse_input_shapes

    shapes = parse_input_shapes(input_shapes)
    con = console(stderr=True)
    with Progress(
        TextColumn("timing"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        console=con,
        transient=True,
        disable=not con.is_terminal,
    ) as bar:
        task = bar.add_task("bench", total=runs)
        stats, speeds = bench_side_by_side(
            [str(m) for m in paths],
            runs=runs,
            warmup=warmup,
            threads=threads,
            batch=batch,
            shapes=shapes,
            data=str(data) if data else None,
            spinning=spinning,
            on_progress=lambda done: bar.update(task, completed=done),
        )
    rows = []
    for path, st, speed in zip(paths, stats, speeds, strict=True):
        rows.append(
            {
                "model": str(path),
                **st.to_dict(),
                "ratio_p50": st.p50_ms / stats[0].p50_ms,
                # paired with the first model's runs: the ratio and its interval, and what they show
                "vs_first": speed.to_dict() if speed else None,
                "verdict": _speed_verdict(speed),
                "size_bytes": path.stat().st_size,
            }
        )
    if output == "json":
        emit_json({"threads": threads, "batch": batch, "results": rows})
        return
    table = Table(title=f"latency, {threads} thread(s), batch {batch}, {runs} runs", title_justify="left",
                  caption="vs first: median of the per-run ratios to the first model (runs paired as "
                          "interleaved), 95% interval by the sign test; faster/slower only when it "
                          "excludes 1.0", caption_justify="left")
    for col in ("model", "p50 ms", "p95 ms", "p99 ms", "samples/s", "size", "vs first", "95% CI", "verdict"):
        table.add_column(col, justify="left" if col in ("model", "verdict") else "right")
    for r, speed in zip(rows, speeds, strict=True):
        table.add_row(
            escape(r["model"]),
            f"{r['p50_ms']:.3f}",
            f"{r['p95_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['throughput']:.0f}",
            _size(r["size_bytes"]),
            f"{speed.ratio:.2f}x" if speed and speed.ratio is not None else "1.00x" if speed is None else "-",
            f"{speed.low:.2f}-{speed.high:.2f}x" if speed and speed.low is not None and speed.high is not None
            else "-",
            r["verdict"],
        )
    console().print(table)


def _speed_verdict(speed: PairedRatio | None) -> str:
    """What a paired ratio to the first model shows at its confidence."""
    if speed is None:
        return "reference"
    if speed.faster():
        return "faster"
    if speed.slower():
        return "slower"
    return "no difference shown" if speed.low is not None else "too few runs"


class _CliProgress:
    def __init__(self, enabled: bool) -> None:
        self.con = console(stderr=True)
        self.live = enabled and self.con.is_terminal
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=self.con,
            transient=True,
            disable=not self.live,
        )
        self.task = self.bar.add_task("starting", total=None)
        self.enabled = enabled

    def __enter__(self) -> _CliProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def stage(self, text: str) -> None:
        if self.live:
            self.bar.update(self.task, description=text)
        elif self.enabled:
            self.con.print(f"… {text}")

    def candidate(self, index: int, total: int, name: str) -> None:
        if self.live:
            self.bar.update(
                self.task, description=f"candidate {index}/{total}: {name}", total=total, completed=index - 1
            )
        elif self.enabled:
            self.con.print(f"… candidate {index}/{total}: {name}")

    def result(self, result: CandidateResult) -> None:
        if self.enabled:
            self.con.print(
                f"  {result.recipe.name}: {result.verdict}" + (f" ({result.reason})" if result.reason else "")
            )


def _report_table(report: QuantizeReport) -> Table:
    table = Table(
        title=f"candidates ({report.metric}, budget: {report.budget}, {report.threads} thread(s))", title_justify="left"
    )
    # When cosine is the metric, a second cosine column would only repeat it.
    with_cosine = report.metric != "cosine"
    columns = ["candidate", "size", "latency vs FP32", report.metric, *(["cosine"] * with_cosine), "verdict", "s"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("candidate", "verdict") else "right")
    table.add_row(
        "FP32 baseline",
        _size(report.baseline["size_bytes"]),
        f"{report.baseline['latency_p50_ms']:.3f} ms" if report.baseline["latency_p50_ms"] is not None
        else "not measured",
        f"{report.baseline['score']:.4g}",
        *(["1"] if with_cosine else []),
        "",
        "",
    )
    styles = {
        "chosen": "bold green",
        "in budget": "green",
        "over budget": "red",
        "slower": "yellow",
        "failed": "red",
        "skipped": "dim",
    }
    for c in report.candidates:
        f = c.fidelity
        table.add_row(
            escape(c.recipe.name),
            _size(c.size_bytes),
            f"{c.latency_ratio:.2f}x" if c.latency_ratio is not None else "-",
            f"{f.score:.4g}" if f else "-",
            *([f"{f.cosine:.4f}" if f else "-"] if with_cosine else []),
            f"[{styles.get(c.verdict, '')}]{c.verdict}[/]",
            f"{c.seconds:.1f}",
        )
    return table


def parse_techniques(given: tuple[str, ...]) -> tuple[Technique, ...] | None:
    """``--technique`` values: none given is auto's choice (None), ``none`` is no technique."""
    if not given:
        return None
    if "none" in given:
        if len(set(given)) > 1:
            raise ConfigError("'none' cannot be combined with a technique", field="--technique")
        return ()
    return tuple(dict.fromkeys(given))  # type: ignore[arg-type]


@click.command("quantize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Where to write the model.")
@click.option("--method", type=click.Choice(["auto", "dynamic", "static"]), default="auto", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True)
@click.option("--per-channel/--per-tensor", default=None, help="Weight granularity (default: try both).")
@click.option("--calibration", help="Calibration data: .npz/.npy, a folder of them or of images, or 'synthetic'.")
@click.option("--eval", "eval_data", help="Eval data held apart from calibration (same forms).")
@click.option("--labels", type=click.Path(path_type=Path), help="True labels of the eval data, one per line.")
@click.option(
    "--metric",
    metavar="NAME[:KEY=VALUE,...]",
    help="accuracy | top1 | top5 | cosine | max-abs | detection-f1 | mask-iou | ctc-agreement | "
    "embedding-cosine | MODULE:FUNCTION; task metrics take settings, e.g. detection-f1:conf=0.25,nms=0.45,iou=0.5 "
    "(default: chosen from the model's outputs, metadata and labels).",
)
@click.option("--max-drop", help="Budget: '1%' = at most 1 point below FP32; '0.99' = a limit on the score.")
@input_shape_option
@click.option("--exclude-nodes", default="", help="Comma-separated node names kept in FP32.")
@click.option(
    "--activation-type",
    type=click.Choice(["uint8", "int8"]),
    default=None,
    help="uint8 (U8S8) is fastest on x86 without VNNI; try int8 (S8S8) on arm64.  [default: uint8]",
)
@click.option("--reduce-range/--no-reduce-range", default=None, help="7-bit weights (default: try both on conv nets).")
@click.option(
    "--platform",
    "platforms",
    metavar="OS/ARCH,...",
    help="A build per platform (linux/amd64,linux/arm64): OUT.linux-amd64.onnx, OUT.linux-arm64.onnx and their "
    "reports, each from its CPU family's recipes; only this host's platform is timed. For `package --platform`.",
)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="Threads for latency timing.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for synthetic data.")
@click.option("--budget-time", help="Cap on the search, e.g. 10m or 300s.  [default: 8m]")
@click.option("--no-mixed-precision", is_flag=True, help="Do not retry with sensitive nodes in FP32.")
@click.option(
    "--technique",
    "techniques",
    multiple=True,
    type=click.Choice(["cle", "bias-correction", "none"]),
    help="Apply to every static recipe (repeat for both): cle (fold scale/shift ops, equalize Conv pairs), "
    "bias-correction (undo the mean shift of int8 weights); none: neither. Default: auto adds candidates with them.",
)
@click.option("--image-size", help="Image folders: resize to HxW (default: the model's input size).")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@click.option("--color", type=click.Choice(["RGB", "BGR", "GRAY"]), default="RGB", show_default=True)
@click.option("--scale", default=1 / 255, show_default="1/255", type=float, help="Images: pixel multiplier.")
@click.option("--mean", default="0", show_default=True, help="Images: per-channel mean, after scaling.")
@click.option("--std", default="1", show_default=True, help="Images: per-channel std, after scaling.")
@click.option("--timing-group", metavar="GROUP",
              help="Rank the candidates inside the budget by what devices of this group measure (with --app, "
                   "--timing-repo, --sign-key and the broker flags).")
@click.option("--app", help="With --timing-group: the app whose agents time the candidates.")
@click.option("--timing-repo", metavar="REGISTRY/REPO",
              help="With --timing-group: where the candidates are pushed, on the registry the agents fetch from.")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path),
              help="With --timing-group: the release key the agents trust (password: EDGEKIT_KEY_PASSWORD).")
@click.option("--timing-devices", default=2, show_default=True, type=click.IntRange(1, 50),
              help="With --timing-group: devices asked per device class.")
@click.option("--timing-runs", default=30, show_default=True, type=click.IntRange(1, 200),
              help="With --timing-group: timed runs per model on each device.")
@click.option("--timing-timeout", default=180.0, show_default=True, type=click.FloatRange(5, 3600),
              help="With --timing-group: seconds to wait for the devices, per platform.")
@click.option("--insecure-registry", is_flag=True, default=None,
              help="With --timing-group: plain HTTP / no TLS verification to --timing-repo (local registries).")
@device_broker_options
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@output_option
def quantize_cmd(
    model: Path,
    out: Path,
    method: str,
    fmt: str,
    per_channel: bool | None,
    calibration: str | None,
    eval_data: str | None,
    labels: Path | None,
    metric: str | None,
    max_drop: str | None,
    input_shapes: tuple[str, ...],
    exclude_nodes: str,
    activation_type: str | None,
    reduce_range: bool | None,
    platforms: str | None,
    threads: int,
    seed: int,
    budget_time: str | None,
    no_mixed_precision: bool,
    techniques: tuple[str, ...],
    image_size: str | None,
    layout: str,
    color: str,
    scale: float,
    mean: str,
    std: str,
    timing_group: str | None,
    app: str | None,
    timing_repo: str | None,
    sign_key: Path | None,
    timing_devices: int,
    timing_runs: int,
    timing_timeout: float,
    insecure_registry: bool | None,
    quiet: bool,
    output: str,
    **broker: Any,
) -> None:
    """Quantize to INT8: the fastest model inside an accuracy budget, or FP32 with the reason.

    --method auto tries static QDQ (per-tensor/per-channel, MinMax/Percentile/Entropy calibration,
    reduce-range) and dynamic MatMul/Gemm quantization, scores each on eval data held apart from
    calibration data with a task metric (picked from the model's outputs, metadata and labels
    unless --metric names one), times each against FP32 interleaved, keeps the most sensitive nodes in FP32
    when a recipe misses the budget, and never returns a model slower than FP32. Writes OUT and
    OUT.report.json.

    \b
    Images in --calibration/--eval folders become tensors by: RGB/BGR/GRAY, resize to the input
    size (or --image-size), (pixel * --scale - --mean) / --std per channel, --layout NCHW/NHWC.

    \b
    .npz samples run along each input's batch axis: axis 0, or where the model puts its batch
    dimension (a state [2,batch,H]: axis 1). Inputs without one (a scalar sample rate) make each
    file one feed, used as it is. If nodes with a constant condition are folded; other If, Loop
    and Scan bodies stay FP32, one line each says why.

    \b
    --platform linux/amd64,linux/arm64 makes a build per device class: the recipes each CPU family
    prefers (x86 without VNNI: U8S8, reduce-range tried; with VNNI: U8S8 then S8S8; arm64: S8S8,
    no reduce-range). This host's platform is judged and timed as above; another platform's
    candidates are checked for fidelity here but not timed, and its build is the first in its
    family's order inside the budget (the report says its latency was not measured there).
    --budget-time applies to each platform.

    \b
    --timing-group G --app A ranks by the devices instead: each platform's candidates inside
    the budget (3 at most, with the FP32 build) are packaged, pushed to --timing-repo, signed
    with --sign-key and timed on --timing-devices devices of that class in G, beside the model
    they run (as `edgekit bench --group`); the build is the fastest there among the candidates
    shown faster than FP32 there (sign test on the per-round ratios, 95% interval under 1.0),
    else FP32 is kept and the reason gives the interval. A platform with no device in G keeps
    the build host's figures, and the report says so: `latency_source` records where each
    figure was measured.

    \b
    Examples:
      edgekit quantize models/digits/digits.onnx -o digits.int8.onnx \\
          --calibration models/digits/calib.npz --eval models/digits/eval.npz \\
          --labels models/digits/eval_labels.txt --max-drop 1%
      edgekit quantize det.onnx -o det.int8.onnx --calibration imgs/ --input-shape x=1,3,640,640 \\
          --metric mask-iou:threshold=0.3 --max-drop 0.95 --budget-time 10m
      edgekit quantize yolov8n.onnx -o yolov8n.int8.onnx --calibration imgs/ \\
          --metric detection-f1:conf=0.25,nms=0.45,iou=0.5 --max-drop 0.95
    """
    from edgekit.optimize.datasets import ImagePreprocessing, parse_floats
    from edgekit.optimize.platforms import parse_target_platforms
    from edgekit.optimize.quantizing import QuantizeSettings, quantize, quantize_for_platforms
    from edgekit.optimize.shapes import parse_input_shapes

    size = None
    if image_size:
        try:
            h, _, w = image_size.lower().partition("x")
            size = (int(h), int(w))
        except ValueError as exc:
            raise ConfigError(f"expected HxW, got {image_size!r}", field="--image-size") from exc
    settings = QuantizeSettings(
        method=method,  # type: ignore[arg-type]
        format=fmt,  # type: ignore[arg-type]
        per_channel=per_channel,
        calibration=calibration,
        eval=eval_data,
        labels=str(labels) if labels else None,
        metric=metric,
        max_drop=max_drop,
        input_shapes=parse_input_shapes(input_shapes),
        exclude_nodes=tuple(n.strip() for n in exclude_nodes.split(",") if n.strip()),
        activation_type=activation_type or "uint8",  # type: ignore[arg-type]
        reduce_range=reduce_range,
        threads=threads,
        seed=seed,
        budget_time=parse_duration(budget_time) if budget_time else QuantizeSettings.budget_time,
        preprocessing=ImagePreprocessing(
            size=size,
            layout=layout,  # type: ignore[arg-type]
            color=color,  # type: ignore[arg-type]
            scale=scale,
            mean=parse_floats(mean, "--mean"),
            std=parse_floats(std, "--std"),
        ),
        mixed_precision=not no_mixed_precision,
        techniques=parse_techniques(techniques),
    )
    if platforms is not None and (activation_type is not None or reduce_range is not None):
        raise ConfigError("--platform picks the activation type and reduce-range per CPU family",
                          field="--activation-type" if activation_type is not None else "--reduce-range",
                          hint="drop it, or quantize without --platform")
    timing = _timing_settings(timing_group, app, timing_repo, sign_key, timing_devices, timing_runs,
                              timing_timeout, insecure_registry, broker)
    if timing is not None:
        with tempfile.TemporaryDirectory(prefix="edgekit-candidates-") as kept:
            from dataclasses import replace

            _quantize_on_devices(model, out, replace(settings, keep_candidates=Path(kept)), platforms, timing,
                                 quiet=quiet, output=output)
        return
    if platforms is not None:
        targets = parse_target_platforms(platforms)
        with _CliProgress(enabled=not quiet and output != "json") as progress:
            reports = quantize_for_platforms(model, out, targets, settings, progress)
        if output == "json":
            emit_json({plat: r.to_dict() for plat, r in reports.items()})
            return
        for plat, report in reports.items():
            console().print(f"[bold]{escape(plat)}[/]")
            _print_report(report)
        files = ",".join(f"{plat}={r.output}" for plat, r in reports.items())
        console().print(f"package them: edgekit package --platform {escape(files)} --name NAME --version V ...")
        return
    with _CliProgress(enabled=not quiet and output != "json") as progress:
        report = quantize(model, out, settings, progress)
    if output == "json":
        emit_json(report.to_dict())
        return
    _print_report(report)


def _timing_settings(group: str | None, app: str | None, repo: str | None, sign_key: Path | None, devices: int,
                     runs: int, timeout: float, insecure: bool | None, broker: dict[str, Any]) -> Any:
    if group is None:
        for flag, value in (("--app", app), ("--timing-repo", repo), ("--sign-key", sign_key)):
            if value is not None:
                raise ConfigError("goes with --timing-group", field=flag)
        return None
    for flag, value in (("--app", app), ("--timing-repo", repo), ("--sign-key", sign_key)):
        if value is None:
            raise ConfigError("--timing-group needs it", field=flag)
    from edgekit.image.options import load_registry_settings
    from edgekit.image.signing import load_private_key, password_from_env
    from edgekit.rollout.devicetiming import DeviceTimingSettings, check_repository

    assert app is not None and repo is not None and sign_key is not None
    return DeviceTimingSettings(
        group=group, app=app, repository=check_repository(repo),
        sign_key=load_private_key(sign_key, password_from_env()), fleet=_fleet_settings(broker),
        registry=load_registry_settings(insecure=insecure).to_options(), per_class=devices, runs=runs,
        timeout=timeout)


def _quantize_on_devices(model: Path, out: Path, settings: Any, platforms: str | None, timing: Any, *,
                         quiet: bool, output: str) -> None:
    from edgekit_agent.oci.fetching import current_platform

    from edgekit.optimize.platforms import parse_target_platforms
    from edgekit.optimize.quantizing import quantize, quantize_for_platforms
    from edgekit.rollout.devicetiming import time_on_devices

    with _CliProgress(enabled=not quiet and output != "json") as progress:
        if platforms is not None:
            reports = quantize_for_platforms(model, out, parse_target_platforms(platforms), settings, progress)
        else:
            report = quantize(model, out, settings, progress)
            reports = {report.platform or current_platform(): report}
        reports = time_on_devices(model, reports, timing, progress.stage)
    if output == "json":
        emit_json({plat: r.to_dict() for plat, r in reports.items()} if platforms is not None
                  else next(iter(reports.values())).to_dict())
        return
    for plat, report in reports.items():
        console().print(f"[bold]{escape(plat)}[/]")
        _print_report(report)
        source = report.device_timing or {}
        line = f"latency: {source.get('source')}"
        if source.get("devices"):
            line += f" ({', '.join(source['devices'])} of {source.get('group')})"
        if source.get("source") != "devices":
            console(stderr=True).print(f"[bold yellow]{escape(plat)}:[/] {escape(str(source.get('why')))}")
        console().print(escape(line))


def _print_report(report: QuantizeReport) -> None:
    from edgekit.optimize.results import report_path

    con = console()
    for w in report.warnings:
        console(stderr=True).print(f"[bold yellow]warning:[/] {w}")
    options = ", ".join(f"{k}={v:g}" for k, v in report.metric_settings.items())
    con.print(
        f"metric: [bold]{escape(report.metric)}[/]" + (f" ({escape(options)})" if options else "")
        + f" — {escape(report.metric_reason)}"
    )
    for line in report.fp32_subgraph_lines:
        console(stderr=True).print(f"[bold yellow]kept in FP32:[/] {escape(line)}")
    con.print(_report_table(report))
    chosen = report.chosen_result
    verdict = "[bold green]INT8[/]" if chosen else "[bold yellow]FP32 kept[/]"
    con.print(f"{verdict} → {report.output}: {report.reason}")
    con.print(f"report: {report_path(Path(report.output))}  ({report.seconds:.0f} s)")


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError as exc:
        raise ConfigError(f"expected a duration like 90s, 10m or 1h, got {text!r}", field="--budget-time") from exc
    if value <= 0:
        raise ConfigError("must be positive", field="--budget-time")
    return value


COMMANDS: list[click.Command] = [inspect_cmd, bench_cmd, quantize_cmd]
