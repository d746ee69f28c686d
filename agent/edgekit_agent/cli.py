"""``edgekit-agent`` command line (argparse: the device needs no click).

    edgekit-agent serve --config /etc/edgekit-agent/config.json
    edgekit-agent check-config --config config.json
    edgekit-agent fetch registry.local/models/digits@sha256:... --to /model --public-key cosign.pub
    edgekit-agent verify /model --public-key cosign.pub
    edgekit-agent verify /model --public-key cosign.pub --image REF@sha256:... --chain-dir SPOOL_DIR/chains

Images must be signed: without a public key (``public_key``, ``--public-key``) the agent refuses
them unless ``allow_unsigned`` (``EDGEKIT_AGENT_ALLOW_UNSIGNED=1``, ``--allow-unsigned``) is set.
Settings come from the config file < ``EDGEKIT_AGENT_*`` environment < flags. Errors print one
line, ``edgekit-agent: error: ...``, and exit with the error's code (2 for a bad setting).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from edgekit_agent import __version__
from edgekit_agent.errors import EdgekitError, LocalFileError

# flag -> setting, for the few settings worth a flag (everything else: file or environment)
_FLAGS = {
    "--device": "device", "--group": "group", "--model-dir": "model_dir", "--broker-url": "broker_url",
    "--listen-host": "listen_host", "--listen-port": "listen_port", "--spool-dir": "spool_dir",
    "--log-level": "log_level",
}


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="PATH", help="JSON (or YAML) settings file")
    for flag, name in _FLAGS.items():
        p.add_argument(flag, dest=name, metavar=name.upper(), default=None, help=f"override setting {name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekit-agent", description="edgekit's on-device daemon: verified model loading, local "
        "inference API, golden probes, MQTT health telemetry with store-and-forward.")
    parser.add_argument("--version", action="version", version=f"edgekit-agent {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the agent", description="Load the model folder, serve the "
                           "inference API and report health until SIGTERM.")
    _add_settings_flags(serve)

    check = sub.add_parser("check-config", help="validate settings and print them",
                           description="Load settings (file < env < flags), check referenced files exist, "
                           "print the result as JSON. Exit 2 naming the first bad field.")
    _add_settings_flags(check)

    fetch = sub.add_parser("fetch", help="fetch a model image into a folder (init container)",
                           description="Fetch an OCI model image by digest, verify its signature with "
                           "--public-key (or, with --allow-unsigned, skip that) and its layer digest, and unpack "
                           "the model folder into DIR.")
    fetch.add_argument("ref", metavar="REF", help="image reference, pinned by digest (repo@sha256:...)")
    fetch.add_argument("--to", dest="dest", required=True, metavar="DIR", help="model folder to create")
    fetch.add_argument("--public-key", metavar="PEM", default=None,
                       help="cosign public key; the image must carry a signature it verifies")
    fetch.add_argument("--allow-unsigned", action="store_true", default=None,
                       help="without --public-key, fetch an unsigned image [EDGEKIT_AGENT_ALLOW_UNSIGNED]")
    fetch.add_argument("--insecure", action="store_true", help="plain HTTP to the registry")
    fetch.add_argument("--ca-file", metavar="PEM", default=None, help="CA bundle for the registry")
    fetch.add_argument("--allow-tag", action="store_true", help="accept a reference without a digest")
    fetch.add_argument("--platform", metavar="OS/ARCH", default=None,
                       help="take this platform's layer of the image index (e.g. linux/arm64, to prepare "
                            "a device's folder elsewhere) [this machine's]")
    fetch.add_argument("--max-bytes", type=int, default=None, metavar="N",
                       help="most bytes per unpacked file when the image records no sizes (default 4 GiB)")

    verify = sub.add_parser("verify", help="check a model folder as serve would load it (offline)",
                            description="Check DIR as `serve` checks it before loading: with --public-key, "
                            "its kept signature chain (signature, manifest, config, metadata) and files, "
                            "without the network (an image volume: against the chain the agent kept, "
                            "--chain-dir); then that onnxruntime loads it. Prints what it verified as JSON, "
                            "or one error line with the error's exit code.")
    verify.add_argument("model_dir", metavar="DIR", help="model folder")
    verify.add_argument("--public-key", metavar="PEM", default=None,
                        help="cosign public key the folder's kept signature must verify with")
    verify.add_argument("--allow-unsigned", action="store_true", default=None,
                        help="without --public-key, check an unsigned folder [EDGEKIT_AGENT_ALLOW_UNSIGNED]")
    verify.add_argument("--image", metavar="REF", default=None,
                        help="the pinned image the folder must hold (repo@sha256:...)")
    verify.add_argument("--chain-dir", metavar="DIR", default=None,
                        help="for a folder without its own chain (an image volume): the folder of chains "
                             "the agent kept (chain_dir, default <spool_dir>/chains); needs --image")
    return parser


def _settings(args: argparse.Namespace) -> Any:
    from edgekit_agent.settings import load_settings

    overrides = {name: getattr(args, name) for name in _FLAGS.values()}
    settings = load_settings(args.config, overrides=overrides)
    settings.check_files()
    return settings


def _allow_unsigned(args: argparse.Namespace) -> bool:
    """``--allow-unsigned``, else ``EDGEKIT_AGENT_ALLOW_UNSIGNED`` read as the settings read it."""
    if args.allow_unsigned:
        return True
    from edgekit_agent.layered import parse_bool
    from edgekit_agent.settings import ENV_PREFIX

    value = os.environ.get(f"{ENV_PREFIX}ALLOW_UNSIGNED", "").strip()
    return bool(value) and parse_bool(f"{ENV_PREFIX}ALLOW_UNSIGNED", value)


def _fetch(args: argparse.Namespace) -> int:
    from edgekit_agent.errors import ConfigError
    from edgekit_agent.loading import fetch_model
    from edgekit_agent.oci.sources import is_layout_path

    if "@sha256:" not in args.ref and not args.allow_tag and not is_layout_path(args.ref):
        raise ConfigError(f"{args.ref!r} is not pinned by digest (use REF@sha256:... or --allow-tag)", field="REF")
    from edgekit_agent.oci import RegistryOptions

    if args.platform is not None and (args.platform.count("/") != 1 or not all(args.platform.split("/"))):
        raise ConfigError(f"{args.platform!r} is not os/arch (e.g. linux/arm64)", field="--platform")
    options = RegistryOptions(insecure=args.insecure, ca_file=args.ca_file)
    provenance = fetch_model(args.ref, args.dest, public_key=args.public_key,
                             allow_unsigned=_allow_unsigned(args), options=options, max_model_bytes=args.max_bytes,
                             platform=args.platform)
    from edgekit_agent.oci import current_platform

    print(json.dumps({"image": provenance.image, "digest": provenance.digest,
                      "layer_digest": provenance.layer_digest, "dest": args.dest,
                      "platform": args.platform or current_platform(),
                      "signature_verified": provenance.key_sha256 is not None}))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edgekit_agent.errors import ConfigError
    from edgekit_agent.loading import load_model

    if args.image is not None and "@sha256:" not in args.image:
        raise ConfigError(f"{args.image!r} is not pinned by digest (use REF@sha256:...)", field="--image")
    if args.chain_dir is not None and args.image is None:
        raise ConfigError("--chain-dir needs --image: the kept chain is found by the image's digest",
                          field="--image")
    model = load_model(args.model_dir, image=args.image, public_key=args.public_key,
                       allow_unsigned=_allow_unsigned(args), chain_dir=args.chain_dir, offline=True)
    print(json.dumps({"name": model.name, "version": model.meta.version, "digest": model.digest,
                      "dest": args.model_dir,
                      "signature_verified": bool(model.provenance and model.provenance.key_sha256)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "check-config":
            settings = _settings(args)
            print(json.dumps(settings.redacted(), indent=2))
            return 0
        if args.command == "serve":
            from edgekit_agent.daemon import configure_logging, serve

            settings = _settings(args)
            configure_logging(settings.log_level)
            return serve(settings)
        if args.command == "fetch":
            return _fetch(args)
        if args.command == "verify":
            return _verify(args)
    except EdgekitError as exc:
        print(f"edgekit-agent: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the device's own files: a read-only mount, a missing volume
        where = f"{exc.filename}: " if exc.filename else ""
        error = LocalFileError(f"{where}{exc.strerror or exc}")
        print(f"edgekit-agent: error: {error.one_line()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
