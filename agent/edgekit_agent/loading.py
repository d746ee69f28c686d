"""Verified model loading: nothing reaches onnxruntime before the folder checks out.

Order of checks (each failure raises an ``EdgekitError`` the agent turns into a
``model_rejected`` event and a not-ready state):

1. ``verify_model_dir``: ``edgekit.json`` parses, ``model.onnx`` and ``probe.npz`` hash to what it
   records (a corrupt or swapped file fails here).
2. Provenance: a folder fetched by ``edgekit-agent fetch`` (or ``serve``) keeps the chain that
   ties it to its image in ``.edgekit-image/`` (see ``edgekit_agent.provenance``). A
   configured ``image`` digest must be the chain's. With a public key the chain is checked
   again at every load, offline: kept signature -> index/manifest -> config -> the config's copy
   of ``edgekit.json`` (before step 1) -> the file hashes -> the files; nothing in the folder is
   trusted because it says so. Without a key nothing loads unless ``allow_unsigned`` says so; then a
   folder without a chain (an image volume) is accepted as is.
   With a key it must be tied to a signed image: the agent verifies the signature of the
   configured ``image`` digest at the registry, follows the digest-checked chain index ->
   platform manifest -> config, and requires the metadata recorded in the config
   (``io.edgekit.metadata``) to name the same model and probe hashes as the folder. Without an
   ``image`` setting, a keyed agent refuses an unrecorded folder. With ``chain_dir`` that chain
   is fetched once and kept, and later loads check the kept chain offline like a fetched folder's
   (``edgekit_agent.keeping``).
3. The runtime requirement (minimum onnxruntime), the probe file, then the session, whose inputs
   and outputs must match the metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent import safejson
from edgekit_agent.errors import ModelRejectedError, PublicKeyRequiredError
from edgekit_agent.modelmeta import ModelMetadata, load_metadata, verify_model_dir
from edgekit_agent.probing import Probe, check_probe_fits, load_probe
from edgekit_agent.protocol.payloads import ModelRef
from edgekit_agent.provenance import Provenance, check_chain, read_chain
from edgekit_agent.runtime import Session, check_runtime_version, create_session


@dataclass(frozen=True)
class LoadedModel:
    """A verified model with its session; share one between many agent cores (fleet simulator)."""

    name: str
    meta: ModelMetadata
    session: Session
    probe: Probe
    digest: str
    directory: Path
    provenance: Provenance | None

    @property
    def ref(self) -> ModelRef:
        return {"name": self.name, "version": self.meta.version, "digest": self.digest}


def describe_folder(model_dir: Path, image: str | None = None) -> ModelRef | None:
    """A best-effort ModelRef for events about a folder that failed to load."""
    try:
        from edgekit_agent.modelmeta import load_metadata

        meta = load_metadata(model_dir)
    except Exception:
        return None
    digest = image.rsplit("@", 1)[1] if image and "@sha256:" in image else f"sha256:{meta.model.sha256}"
    return {"name": meta.name, "version": meta.version, "digest": digest}


def require_key(public_key: str | None, allow_unsigned: bool) -> None:
    """Signed by default: without a key, refuse unless unsigned models are explicitly allowed."""
    if public_key is None and not allow_unsigned:
        raise PublicKeyRequiredError("no public key is configured, and unsigned models are refused",
                                     field="public_key",
                                     hint="set public_key to the release key (cosign.pub), or allow_unsigned: true "
                                          "(EDGEKIT_AGENT_ALLOW_UNSIGNED=1, --allow-unsigned) to run unsigned")


def load_model(model_dir: str | os.PathLike[str], *, image: str | None = None, public_key: str | None = None,
               allow_unsigned: bool = False, providers: tuple[str, ...] = (), intra_op_threads: int = 0,
               spinning: bool = False, name: str | None = None, registry_options: Any = None,
               chain_dir: str | os.PathLike[str] | None = None, offline: bool = False) -> LoadedModel:
    """Verify ``model_dir`` and build its session. Raises on anything that does not check out;
    without ``public_key`` only when ``allow_unsigned`` (``PublicKeyRequiredError`` otherwise).
    ``chain_dir``: where the chain of a folder without one (an image volume) is kept after its
    first fetch (``edgekit_agent.keeping``); None: the registry is asked at every load.
    ``offline``: never ask the registry; a folder without a chain verifies only against one kept in
    ``chain_dir`` (``edgekit-agent verify``)."""
    require_key(public_key, allow_unsigned)
    root = Path(model_dir)
    chain = read_chain(root)
    provenance: Provenance | None = None
    if chain is not None and public_key is not None:
        # signature -> manifest -> config -> metadata first, then the files against the metadata
        provenance = check_chain(root, chain, load_metadata(root), public_key=public_key)
    meta = verify_model_dir(root)
    if chain is not None and provenance is None:
        provenance = Provenance(image=chain.image, digest=chain.digest, layer_digest=None, key_sha256=None)
    digest = provenance.digest if provenance is not None else f"sha256:{meta.model.sha256}"
    if image is not None:
        want = image.rsplit("@", 1)[1]
        if provenance is not None and provenance.digest != want:
            raise ModelRejectedError(f"{root} holds image {provenance.digest}, the agent is configured for {want}",
                                     hint="fetch the configured image again")
        digest = want
    if public_key is not None and provenance is None:
        if image is None:
            raise ModelRejectedError(f"{root} has no verified signature record and a public key is configured",
                                     hint="fetch the image with `edgekit-agent fetch REF --to DIR "
                                          "--public-key KEY`, or set image to its pinned reference")
        if chain_dir is not None:
            from edgekit_agent.keeping import verify_with_kept_chain

            provenance = verify_with_kept_chain(root, meta, image, public_key, chain_dir=chain_dir,
                                                options=registry_options, fetch=not offline)
        elif offline:
            raise ModelRejectedError(f"{root} keeps no signature chain (an image volume?), and verifying it "
                                     "offline needs the chain the agent kept for it",
                                     hint="name the folder of kept chains: --chain-dir <spool_dir>/chains")
        else:
            provenance = verify_folder_signature(root, meta, image, public_key, options=registry_options)
    check_runtime_version(meta.runtime.min_onnxruntime)
    probe = load_probe(root / meta.probe.path, rtol=meta.probe.rtol, atol=meta.probe.atol)
    session = create_session(str(root / meta.model.path), providers=providers or meta.runtime.execution_providers,
                             intra_op_threads=intra_op_threads, spinning=spinning)
    _check_io(meta, session)
    check_probe_fits(probe, session)
    return LoadedModel(name or meta.name, meta, session, probe, digest, root, provenance)


def _check_io(meta: ModelMetadata, session: Session) -> None:
    for what, declared, actual in (("input", meta.inputs, session.inputs), ("output", meta.outputs, session.outputs)):
        d = {t.name: t.dtype for t in declared}
        a = {t.name: str(t.dtype) for t in actual}
        if set(d) != set(a):
            raise ModelRejectedError(f"edgekit.json {what}s {sorted(d)} differ from the model's {sorted(a)}")
        for tname, dtype in d.items():
            if a[tname] != dtype and not (dtype == "string" and a[tname] == "object"):
                raise ModelRejectedError(f"edgekit.json says {what} {tname} is {dtype}, the model has {a[tname]}")


def verify_folder_signature(root: Path, meta: ModelMetadata, image: str, public_key: str, *,
                            options: Any = None) -> Provenance:
    """Tie an unrecorded folder (an image volume) to the signed image ``image``; see the module doc."""
    from edgekit_agent.oci import open_source, resolve_image, verify_image_signatures
    from edgekit_agent.oci.mediatypes import LABEL_METADATA

    digest = image.rsplit("@", 1)[1]
    source = open_source(image, options)
    try:
        report = verify_image_signatures(source, digest, public_key)
        resolved = resolve_image(source)
    finally:
        source.close()
    if resolved.digest != digest:
        raise ModelRejectedError(f"{image} resolved to {resolved.digest}, not the pinned digest")
    labels = (resolved.config.get("config") or {}).get("Labels") or {}
    try:
        recorded = safejson.loads(labels[LABEL_METADATA])
        want_model, want_probe = recorded["model"]["sha256"], recorded["probe"]["sha256"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelRejectedError(f"{image} does not record its model metadata ({LABEL_METADATA})") from exc
    if (want_model, want_probe) != (meta.model.sha256, meta.probe.sha256):
        raise ModelRejectedError(f"{root} does not hold the signed image {digest[:19]}…: model/probe hashes differ",
                                 hint="the mounted folder is another model than the configured image")
    return Provenance(image=image, digest=digest, layer_digest=str(resolved.layer.get("digest")),
                      key_sha256=report.key_id)


def fetch_model(image: str, dest: str | os.PathLike[str], *, public_key: str | None = None,
                allow_unsigned: bool = False, options: Any = None, max_model_bytes: int | None = None,
                platform: str | None = None) -> Provenance:
    """Fetch ``image`` into ``dest`` with ``edgekit_agent.oci.fetch_image``, which keeps its chain.
    Without ``public_key`` only when ``allow_unsigned``, and before any network. ``platform``
    (os/arch): whose layer to take [this machine's]."""
    require_key(public_key, allow_unsigned)
    from edgekit_agent.oci import fetch_image
    from edgekit_agent.oci.unpacking import DEFAULT_MAX_BYTES

    result = fetch_image(image, Path(dest), public_key=public_key, options=options, platform=platform,
                         max_model_bytes=max_model_bytes or DEFAULT_MAX_BYTES)
    return result.provenance
