"""``edgekit package``, ``push``, ``pull``, ``keygen``, ``sign``, ``verify``, ``show``: model images."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from edgekit_agent.oci.fetching import fetch_image
from edgekit_agent.oci.reference import parse_reference
from edgekit_agent.oci.registry import RegistryOptions
from edgekit_agent.oci.signatures import key_fingerprint, load_public_key
from edgekit_agent.oci.sources import not_an_image
from rich.markup import escape
from rich.table import Table

from edgekit.cli._output import console, emit_json, output_option
from edgekit.errors import ConfigError, ImageReferenceError, OutputError, SigningKeyError
from edgekit.image.options import RegistrySettings, load_registry_settings
from edgekit.image.progress import RichTransferProgress
from edgekit.image.pushing import TransferSettings, pull_image, push_layout
from edgekit.image.showing import show_image
from edgekit.image.signing import (
    ALLOW_UNENCRYPTED_ENV,
    PASSWORD_ENV,
    load_private_key,
    password_from_env,
    sign_image,
    verify_image,
    write_keypair,
)

F = TypeVar("F", bound=Callable[..., Any])


def registry_options(func: F) -> F:
    """The registry flags every command that talks to a registry takes."""
    options = [
        click.option("--insecure", is_flag=True, default=None,
                     help="Skip TLS verification and allow plain HTTP (local registries)."),
        click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="PEM file with the CA that signed the registry's certificate."),
        click.option("--username", "-u", help="Registry user (else docker config.json credentials)."),
        click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin."),
        click.option("--docker-config", type=click.Path(dir_okay=False, path_type=Path),
                     help="docker config.json with registry credentials [default: ~/.docker/config.json]."),
        click.option("--retries", type=click.IntRange(0, 20), help="Retries on 5xx and dropped connections [4]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _registry(kwargs: dict[str, Any]) -> tuple[RegistryOptions, RegistrySettings]:
    password = None
    if kwargs.pop("password_stdin", False):
        password = sys.stdin.readline().rstrip("\r\n")
    overrides = {
        "insecure": kwargs.pop("insecure", None),
        "ca_file": str(ca) if (ca := kwargs.pop("ca_file", None)) else None,
        "username": kwargs.pop("username", None),
        "password": password,
        "docker_config": str(dc) if (dc := kwargs.pop("docker_config", None)) else None,
        "retries": kwargs.pop("retries", None),
    }
    settings = load_registry_settings(**overrides)
    return settings.to_options(), settings


def _password(confirm: bool, what: str) -> bytes:
    env = password_from_env()
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise SigningKeyError(f"no password for {what}", hint=f"set {PASSWORD_ENV} (stdin is not a terminal)")
    return click.prompt(f"Password for {what}", hide_input=True, confirmation_prompt=confirm,
                        default="", show_default=False).encode()


_ALLOW_UNENCRYPTED = click.option(
    "--allow-unencrypted-key", is_flag=True,
    help=f"Accept an unencrypted private key or an empty password (or {ALLOW_UNENCRYPTED_ENV}=1).")


def _load_signing_key(path: Path, allow_unencrypted: bool) -> Any:
    return load_private_key(path, lambda confirm: _password(confirm, str(path)),
                            allow_unencrypted=allow_unencrypted or None)


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# --- package -----------------------------------------------------------------------------------
@click.command("package")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--name", required=True, help="Model name (image title), lowercase.")
@click.option("--version", "version", required=True, help="Model version; also the image tag.")
@click.option("-o", "--output-dir", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write an OCI image layout folder here.")
@click.option("--push", "push_ref", metavar="REF", help="Push straight to this registry reference.")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path),
              help="With --push: sign the pushed image with this private key, and attach its quantization "
                   "report as a signed in-toto attestation (as `cosign attest`).")
@_ALLOW_UNENCRYPTED
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Quantization report to embed [default: <model>.report.json when present].")
@click.option("--probe-data", type=click.Path(dir_okay=False, path_type=Path),
              help="An .npz of golden probe inputs (keyed by input name) [default: generated].")
@click.option("--probe-shape", "probe_shapes", multiple=True, metavar="NAME=D1,D2,...",
              help="Shape for a generated probe input with symbolic dims. Repeatable.")
@click.option("--rtol", type=float, help="Probe relative tolerance [fp32 1e-3, int8 5e-2].")
@click.option("--atol", type=float, help="Probe absolute tolerance [fp32 1e-4, int8 5e-2].")
@click.option("--source", help="Source URL recorded in the image (org.opencontainers.image.source).")
@click.option("--created", help="Creation time, RFC 3339 [default: SOURCE_DATE_EPOCH, else the model's mtime].")
@click.option("--platform", "platforms", multiple=True, metavar="OS/ARCH[=FILE]",
              help="A platform listed in the index; with =FILE it gets that model (its own layer, with the "
                   "report beside FILE and its own probe), else MODEL. Repeatable or comma-separated "
                   "[default: linux/amd64 and linux/arm64].")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@registry_options
@output_option
def package_cmd(model: Path | None, name: str, version: str, out_dir: Path | None, push_ref: str | None,
                sign_key: Path | None, allow_unencrypted_key: bool, report: Path | None, probe_data: Path | None,
                probe_shapes: tuple[str, ...],
                rtol: float | None, atol: float | None, source: str | None, created: str | None,
                platforms: tuple[str, ...], force: bool, output: str, **kwargs: Any) -> None:
    """Build a model image: the ONNX model, its metadata and a golden probe, as an OCI image.

    The image index lists linux/amd64 and linux/arm64 manifests that share one layer holding
    /model/model.onnx, /model/edgekit.json and /model/probe.npz. A platform given its own
    file (--platform OS/ARCH=FILE, a build per device class) gets a layer of its own; MODEL is
    then the model of the platforms without one, and may be left out. The same inputs give the
    same digest.

    \b
    Examples:
      edgekit package model.int8.onnx --name digits --version 1.2.0 -o out/digits-1.2.0
      edgekit package --name digits --version 1.2.0 -o out/digits-1.2.0 \\
          --platform linux/amd64=m.linux-amd64.onnx,linux/arm64=m.linux-arm64.onnx
      edgekit package model.onnx --name digits --version 1.2.0 --push localhost:5000/models/digits
      edgekit package model.onnx --name digits --version 1.2.0 --push registry.example.com/m/digits \\
          --sign-key cosign.key
    """
    # onnx/onnxruntime load only for this command: the transfer commands start faster without them
    from edgekit.image.building import PackageSettings, package, package_to_temp, parse_platforms
    from edgekit.optimize.shapes import parse_input_shapes

    if (out_dir is None) == (push_ref is None):
        raise ConfigError("give exactly one of -o/--output-dir and --push", field="--output-dir")
    if sign_key is not None and push_ref is None:
        raise ConfigError("--sign-key needs --push (sign a local layout after pushing it)", field="--sign-key")
    plats, own_files = parse_platforms(platforms)
    if model is None and not own_files:
        raise ConfigError("give MODEL, or a model per platform (--platform OS/ARCH=FILE)", field="MODEL")
    settings = PackageSettings(
        name=name, version=version, source=source, created=created, report=report, probe_data=probe_data,
        probe_shapes=parse_input_shapes(probe_shapes), rtol=rtol, atol=atol,
        platforms=plats, platform_models=own_files)
    err = console(stderr=True)
    if out_dir is not None:
        _registry(kwargs)
        image = package(model, settings, out_dir, force=force)
        if output == "json":
            emit_json(image.to_dict())
        else:
            con = console()
            con.print(f"packaged [bold]{escape(name)}:{escape(version)}[/] into {escape(str(out_dir))}")
            if image.per_platform:
                layers = ", ".join(f"{plat} {_size(layer['size'])}" for plat, layer in image.layers.items())
                con.print(f"digest {image.digest}  a layer per platform: {layers}")
            else:
                con.print(f"digest {image.digest}  layer {_size(image.layer_size)}  "
                          f"platforms {', '.join(image.manifests)}")
        return
    assert push_ref is not None
    ref = parse_reference(push_ref)
    options, reg = _registry(kwargs)
    # ask before the long part
    key = _load_signing_key(sign_key, allow_unencrypted_key) if sign_key is not None else None
    image, tmp = package_to_temp(model, settings)
    try:
        with RichTransferProgress(err, "pushing") as progress:
            result = push_layout(image.path, ref.with_tag(ref.tag or version), options=options,
                                 settings=TransferSettings(chunk_size=reg.chunk_size_mb << 20,
                                                           monolithic_max=reg.chunk_size_mb << 20),
                                 progress=progress)
        signed = sign_image(parse_reference(result.reference), key, options=options) if key else None
        attested = None
        if key:
            from edgekit import __version__
            from edgekit.image.attesting import attest_image, predicate_for

            predicate = predicate_for(image.metadata.to_dict(), list(image.manifests), edgekit_version=__version__,
                                      per_platform={plat: meta.to_dict()
                                                    for plat, meta in image.platform_metadata.items()})
            attested = attest_image(parse_reference(result.reference), key, predicate, options=options)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if output == "json":
        emit_json({"image": image.to_dict(), "push": result.to_dict(),
                   "signature": signed.to_dict() if signed else None,
                   "attestation": attested.to_dict() if attested else None})
        return
    con = console()
    con.print(f"pushed [bold]{escape(result.reference)}[/]")
    con.print(f"{result.blobs_uploaded} blob(s) uploaded ({_size(result.bytes_uploaded)}), "
              f"{result.blobs_existing} already there")
    if signed:
        con.print(f"signed with key {signed.key_id} -> {signed.signature_tag}")
    if attested:
        con.print(f"attested the quantization report -> {attested.attestation_tag}")


# --- push / pull -------------------------------------------------------------------------------
@click.command("push")
@click.argument("layout", type=click.Path(path_type=Path))
@click.argument("ref")
@click.option("--mount-from", multiple=True, metavar="REPO",
              help="Repository on the same registry to mount blobs from instead of uploading. Repeatable.")
@click.option("--chunk-size", type=click.IntRange(1, 4096), metavar="MB",
              help="Upload blobs bigger than this in chunks of this size [64].")
@click.option("--no-signatures", is_flag=True, help="Do not push cosign signatures found in the layout.")
@registry_options
@output_option
def push_cmd(layout: Path, ref: str, mount_from: tuple[str, ...], chunk_size: int | None,
             no_signatures: bool, output: str, **kwargs: Any) -> None:
    """Push an OCI layout folder (from `edgekit package -o`) to a registry.

    Blobs the registry already has are not sent again. Without a tag in REF the layout's own
    tag (the model version) is used.

    \b
    Examples:
      edgekit push out/digits-1.2.0 localhost:5000/models/digits --insecure
      edgekit push out/digits-1.2.0 registry.example.com/models/digits:1.2.0 -u ci --password-stdin
    """
    target = parse_reference(ref)
    options, reg = _registry(kwargs)
    chunk = (chunk_size or reg.chunk_size_mb) << 20
    with RichTransferProgress(console(stderr=True), "pushing") as progress:
        result = push_layout(layout, target, options=options, progress=progress,
                             settings=TransferSettings(chunk_size=chunk, monolithic_max=chunk,
                                                       mount_from=tuple(mount_from)),
                             include_signatures=not no_signatures)
    if output == "json":
        emit_json(result.to_dict())
        return
    con = console()
    con.print(f"pushed [bold]{escape(result.reference)}[/]")
    con.print(f"{result.blobs_uploaded} blob(s) uploaded ({_size(result.bytes_uploaded)}), "
              f"{result.blobs_existing} already there, {result.blobs_mounted} mounted"
              + (f", {result.signatures} signature manifest" if result.signatures else ""))


@click.command("pull")
@click.argument("ref")
@click.option("-o", "--output-dir", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (an OCI layout, or the model folder with --model-folder).")
@click.option("--model-folder", is_flag=True,
              help="Write the unpacked, verified model folder for this machine's platform (what a device gets).")
@click.option("--platform", metavar="OS/ARCH",
              help="With --model-folder: take this platform's layer (e.g. linux/arm64) [this machine's].")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path),
              help="Public key: the image's signature must verify with it.")
@click.option("--require-signature", is_flag=True, help="Fail unless a signature verifies (needs --key).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@registry_options
@output_option
def pull_cmd(ref: str, out_dir: Path, model_folder: bool, platform: str | None, key: Path | None,
             require_signature: bool, force: bool, output: str, **kwargs: Any) -> None:
    """Pull a model image into an OCI layout folder (all platforms and its signatures).

    Every blob is checked against its digest; nothing appears at the output until the whole
    image is there.

    \b
    Examples:
      edgekit pull localhost:5000/models/digits:1.2.0 -o digits-1.2.0 --insecure
      edgekit pull registry.example.com/models/digits:1.2.0 -o model/ --model-folder --key cosign.pub
    """
    if (why := not_an_image(ref)) is not None:  # before parse_reference reads it as a Docker Hub name
        raise ImageReferenceError(why, hint="pull takes registry/repository:tag")
    target = parse_reference(ref)
    options, _ = _registry(kwargs)
    if require_signature and key is None:
        raise ConfigError("--require-signature needs --key", field="--key")
    if platform is not None and not model_folder:
        raise ConfigError("--platform needs --model-folder (a layout pull keeps every platform)", field="--platform")
    if platform is not None and (platform.count("/") != 1 or not all(platform.split("/"))):
        raise ConfigError(f"{platform!r} is not os/arch (e.g. linux/arm64)", field="--platform")
    pub = load_public_key(key) if key is not None else None
    err = console(stderr=True)
    if model_folder:
        if out_dir.exists() and any(out_dir.iterdir()) and not force and not (out_dir / "edgekit.json").exists():
            raise OutputError(f"{out_dir} already exists and is not empty", hint="pass --force to replace it")
        with RichTransferProgress(err, "pulling") as progress:
            advance = progress.start("model layer", 0)
            fetched = fetch_image(str(target), out_dir, public_key=pub, options=options, on_bytes=advance,
                                  platform=platform)
            progress.finish("model layer", "downloaded")
        data = {"reference": str(target), "digest": fetched.digest, "manifest": fetched.manifest_digest,
                "platform": fetched.platform, "path": str(fetched.path),
                "signature": "verified" if fetched.signature else "not checked"}
    else:
        with RichTransferProgress(err, "pulling") as progress:
            result = pull_image(target, out_dir, options=options, progress=progress, force=force,
                                public_key=pub, require_signature=require_signature)
        data = result.to_dict()
        data["signature"] = "verified" if pub is not None else ("present" if result.signatures else "none")
    if output == "json":
        emit_json(data)
        return
    con = console()
    con.print(f"pulled [bold]{escape(str(target))}[/] into {escape(str(out_dir))}")
    con.print(f"digest {data['digest']}  signature {data['signature']}")


# --- keys and signatures -----------------------------------------------------------------------
@click.command("keygen")
@click.option("--output-key-prefix", "prefix", default="edgekit", show_default=True,
              help="Write PREFIX.key (private, encrypted) and PREFIX.pub.")
@click.option("--format", "fmt", type=click.Choice(["cosign", "pkcs8"]), default="cosign", show_default=True,
              help="cosign: cosign's own encrypted key format (works with `cosign sign --key`); "
                   "pkcs8: encrypted PKCS#8 PEM.")
@click.option("--force", is_flag=True, help="Replace existing key files.")
@output_option
def keygen_cmd(prefix: str, fmt: str, force: bool, output: str) -> None:
    """Create an ECDSA P-256 signing key pair (cosign-compatible).

    The password comes from EDGEKIT_KEY_PASSWORD (or COSIGN_PASSWORD), else a prompt.

    \b
    Examples:
      edgekit keygen
      EDGEKIT_KEY_PASSWORD=... edgekit keygen --output-key-prefix keys/release
    """
    password = _password(True, f"{prefix}.key")
    key_path, pub_path = write_keypair(prefix, password, fmt=fmt, force=force)
    kid = key_fingerprint(load_public_key(pub_path))
    if output == "json":
        emit_json({"private_key": str(key_path), "public_key": str(pub_path), "key_id": kid, "format": fmt})
        return
    con = console()
    con.print(f"private key {escape(str(key_path))} (keep it secret), public key {escape(str(pub_path))}")
    con.print(f"key id {kid}")


@click.command("sign")
@click.argument("ref")
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Private key.")
@click.option("--annotation", "-a", "annotations", multiple=True, metavar="KEY=VALUE",
              help="Extra claim in the signed payload's optional section. Repeatable.")
@_ALLOW_UNENCRYPTED
@registry_options
@output_option
def sign_cmd(ref: str, key: Path, annotations: tuple[str, ...], allow_unencrypted_key: bool, output: str,
             **kwargs: Any) -> None:
    """Sign an image in a registry (cosign-compatible: `cosign verify --key` accepts it).

    \b
    Examples:
      edgekit sign localhost:5000/models/digits:1.2.0 --key edgekit.key --insecure
      cosign verify --key edgekit.pub --insecure-ignore-tlog localhost:5000/models/digits:1.2.0
    """
    target = parse_reference(ref)
    options, _ = _registry(kwargs)
    extra: dict[str, Any] = {}
    for item in annotations:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", field="--annotation")
        extra[k] = v
    result = sign_image(target, _load_signing_key(key, allow_unencrypted_key), options=options,
                        annotations=extra or None)
    if output == "json":
        emit_json(result.to_dict())
        return
    con = console()
    state = "signed" if result.added else "already signed with this key"
    con.print(f"{state}: [bold]{escape(result.reference)}[/]")
    con.print(f"key {result.key_id}, {result.signatures} signature(s) under {result.signature_tag}")


@click.command("verify")
@click.argument("target", metavar="REF|DIR")
@click.option("--key", "--public-key", "key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Public key.")
@click.option("--require-attestation", is_flag=True,
              help="Fail (exit 91) unless the image carries a quantization attestation.")
@registry_options
@output_option
def verify_cmd(target: str, key: Path, require_attestation: bool, output: str, **kwargs: Any) -> None:
    """Check an image's cosign signature with a public key (registry reference or layout folder),
    and its quantization attestation when it has one.

    Exits 0 only when a signature made with KEY names this image's digest and any quantization
    attestation it carries verifies with KEY for this digest (92 otherwise); without one it says so
    and exits 0 unless --require-attestation (91).

    \b
    Examples:
      edgekit verify localhost:5000/models/digits:1.2.0 --key edgekit.pub --insecure
      edgekit verify pulled/digits-1.2.0 --key cosign.pub
    """
    from edgekit.errors import AttestationMissingError
    from edgekit.image.attesting import verify_attestation

    options, _ = _registry(kwargs)
    digest, report = verify_image(target, key, options=options)
    try:
        attested: dict[str, Any] | None = verify_attestation(target, key, options=options, digest=digest).to_dict()
    except AttestationMissingError:
        if require_attestation:
            raise
        attested = None
    if output == "json":
        emit_json({"target": target, "digest": digest, "verified": True, "key_id": report.key_id,
                   "signatures": report.found, "payloads": list(report.verified), "attestation": attested})
        return
    con = console()
    con.print(f"verified [bold]{escape(target)}[/] ({digest}) with key {report.key_id}")
    if attested is None:
        con.print("quantization attestation: none")
        return
    pred = attested["predicate"]
    acc = pred.get("accuracy") or {}
    ratios = ", ".join(f"{p} x{_figure(v.get('ratio'), '.2f')} ({_where(v)})"
                       for p, v in (pred.get("latency") or {}).items()
                       if isinstance(v, dict) and v.get("ratio") is not None) or "not measured"
    con.print(escape(f"quantization attestation verified: {pred.get('precision')} {pred.get('method') or ''}"
                     f" {acc.get('metric')} drop {_figure(acc.get('drop'))}, latency {ratios}"), highlight=False)


@click.command("show")
@click.argument("target", metavar="REF|DIR")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="Public key to check the signature.")
@click.option("--platform", metavar="OS/ARCH",
              help="Whose manifest and metadata to show (an image with a layer per platform) [this machine's].")
@registry_options
@output_option
def show_cmd(target: str, key: Path | None, platform: str | None, output: str, **kwargs: Any) -> None:
    """Show a model image: metadata, digest, size, signature status and quantization summary.

    \b
    Examples:
      edgekit show out/digits-1.2.0
      edgekit show localhost:5000/models/digits:1.2.0 --insecure --key edgekit.pub --output json
    """
    options, _ = _registry(kwargs)
    if platform is not None and (platform.count("/") != 1 or not all(platform.split("/"))):
        raise ConfigError(f"{platform!r} is not os/arch (e.g. linux/arm64)", field="--platform")
    summary = show_image(target, options=options, public_key=key, platform=platform)
    if output == "json":
        emit_json(summary.to_dict())
        return
    con = console()
    meta = summary.metadata or {}
    title = f"{meta.get('name', '?')}:{meta.get('version', '?')}" if meta else "(not an edgekit image)"
    con.print(f"[bold]{escape(title)}[/]  {escape(summary.source)}")
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("digest", summary.digest)
    table.add_row("platforms", ", ".join(summary.platforms) + f" (shown: {summary.platform})")
    table.add_row("size", f"{_size(summary.total_size)} (layer {_size(summary.layer_size)})")
    sig = summary.signature
    table.add_row("signature", escape(f"{sig.get('status')} ({sig.get('count', 0)})"
                                      + (f", key {sig['key']}" if sig.get("key") else "")
                                      + (f": {sig['error']}" if sig.get("error") else "")))
    if meta:
        table.add_row("precision", str(meta.get("precision")))
        table.add_row("opset", f"{meta.get('opset')} (IR {meta.get('ir_version')})")
        for kind in ("inputs", "outputs"):
            for t in meta.get(kind) or []:
                table.add_row(kind[:-1], escape(f"{t['name']} {t['dtype']} {t['shape']}"))
        model = meta.get("model") or {}
        table.add_row("model", f"{_size(model.get('size'))} sha256 {str(model.get('sha256', ''))[:16]}…")
        probe = meta.get("probe") or {}
        table.add_row("probe", f"rtol {probe.get('rtol')} atol {probe.get('atol')}")
        table.add_row("created", str(meta.get("created")))
        if meta.get("source"):
            table.add_row("source", escape(str(meta["source"])))
        q = meta.get("quantization")
        if q:
            size, lat = q.get("size") or {}, q.get("latency") or {}
            fid = q.get("fidelity") or {}
            table.add_row("quantization", escape(
                f"{q.get('method') or q.get('chosen')}: size x{_figure(size.get('ratio'), '.2f')}, "
                f"latency x{_figure(lat.get('ratio'), '.2f')} on {lat.get('measured_on') or 'the build host'}, "
                f"fidelity {json_short(fid)}"))
            dev = lat.get("devices")
            if isinstance(dev, dict) and dev.get("ratio") is not None:
                where = _where({**dev, "measured_on": "devices"})
                table.add_row("device latency", escape(
                    f"{dev.get('platform')}: x{_figure(dev.get('ratio'), '.2f')} FP32 ({where}, "
                    f"{dev.get('rounds')} paired rounds)"))
            if q.get("metric"):
                shown = ", ".join(f"{k}={_figure(v)}" for k, v in (q.get("metric_settings") or {}).items())
                table.add_row("metric", escape(
                    str(q["metric"]) + (f" ({shown})" if shown else "")
                    + (f", budget {q['budget']}" if q.get("budget") else "")))
        else:
            table.add_row("quantization", "none")
    con.print(table)


def _where(latency: dict[str, Any]) -> str:
    """``2 devices of cams, 95% CI 0.89-0.91x`` or ``build host``: where a latency was measured."""
    where = str(latency.get("measured_on") or "?")
    if where == "devices":
        where = f"{latency.get('devices')} devices of {latency.get('group')}"
    low, high, level = latency.get("ci_low"), latency.get("ci_high"), latency.get("confidence")
    if isinstance(low, int | float) and isinstance(high, int | float):
        level_text = f"{level:.0%}" if isinstance(level, int | float) else "?%"
        where += f", {level_text} CI {low:.2f}-{high:.2f}x"
    return where


def _figure(value: Any, spec: str = ".4g") -> str:
    """A measured float as people read it (0.658, not 0.6582048556817742); anything else as is."""
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def json_short(data: Any) -> str:
    if isinstance(data, dict):
        return ", ".join(f"{k} {_figure(v)}" for k, v in list(data.items())[:4] if not isinstance(v, dict | list))
    return str(data)


COMMANDS: list[click.Command] = [package_cmd, push_cmd, pull_cmd, keygen_cmd, sign_cmd, verify_cmd, show_cmd]
