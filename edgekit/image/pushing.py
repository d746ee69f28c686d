"""Moving images between an OCI layout folder and a registry: ``push`` and ``pull``.

Push order follows the distribution spec: blobs first (each one HEAD-checked, so what the
registry already has is never sent again; mounted from another repository when one is named;
uploaded in one PUT up to ``monolithic_max`` bytes, else in PATCH chunks that resume from the
registry's offset after a dropped connection), then platform manifests by digest, then the
index under its tag, then the cosign signature and attestation manifests found beside the image
(`sha256-<hex>.sig`, `.att`); pull copies them into the folder too.

Pull writes an OCI layout folder through ``LayoutWriter``: nothing appears at the destination
until every blob has been downloaded and checked against its digest.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgekit_agent.errors import ImageError, ImageLayoutError, ImageNotFoundError, RegistryUnavailableError
from edgekit_agent.oci.layout import OciLayout
from edgekit_agent.oci.mediatypes import ANN_REF_NAME, ANN_VERSION, check_descriptor, signature_tag
from edgekit_agent.oci.reference import Reference, parse_reference
from edgekit_agent.oci.registry import Manifest, RegistryClient, RegistryOptions
from edgekit_agent.oci.signatures import verify_image_signatures
from edgekit_agent.oci.sources import ImageSource, LayoutSource, RegistrySource, manifest_kind
from edgekit_agent.oci.transport import FileSlice

from edgekit.image.attestations import attestation_tag
from edgekit.image.layouts import LayoutWriter

__all__ = ["PullResult", "PushResult", "TransferProgress", "TransferSettings", "pull_image", "push",
           "push_layout", "upload_blob"]


@dataclass(frozen=True)
class TransferSettings:
    chunk_size: int = 64 << 20
    monolithic_max: int = 64 << 20
    mount_from: tuple[str, ...] = ()


class TransferProgress(Protocol):
    """Where transfer progress goes (a rich progress bar in the CLI)."""

    def start(self, label: str, total: int) -> Callable[[int], None]: ...

    def finish(self, label: str, outcome: str) -> None:
        """``outcome``: uploaded, existing, mounted, downloaded or failed."""


class _NoProgress:
    def start(self, label: str, total: int) -> Callable[[int], None]:
        return lambda n: None

    def finish(self, label: str, outcome: str) -> None:
        pass


@dataclass
class PushResult:
    reference: str
    digest: str
    tag: str | None
    blobs_uploaded: int = 0
    blobs_existing: int = 0
    blobs_mounted: int = 0
    bytes_uploaded: int = 0
    manifests: int = 0
    signatures: int = 0
    attestations: int = 0  # cosign attestation manifests (``sha256-<hex>.att``) pushed beside the image
    requests: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PullResult:
    reference: str
    digest: str
    path: Path
    tag: str
    blobs: int = 0
    bytes_downloaded: int = 0
    signatures: int = 0
    attestations: int = 0
    platforms: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["path"] = str(self.path)
        return data


# --- graph walking -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Graph:
    top: Manifest
    children: tuple[Manifest, ...]  # platform manifests of an index (empty for a single manifest)
    blobs: tuple[dict[str, Any], ...]  # config and layer descriptors, each digest once

    @property
    def manifests(self) -> tuple[Manifest, ...]:
        return self.children if self.children else (self.top,)


def _graph(source: ImageSource, top: Manifest) -> _Graph:
    children: list[Manifest] = []
    if manifest_kind(top) == "index":
        for entry in top.json().get("manifests") or []:
            desc = check_descriptor(entry, "index entry")
            children.append(source.manifest(desc["digest"]))
    blobs: dict[str, dict[str, Any]] = {}
    for manifest in children or [top]:
        body = manifest.json()
        config = check_descriptor(body.get("config"), f"config of {manifest.digest[:19]}…")
        blobs.setdefault(config["digest"], config)
        layers = body.get("layers")
        if not isinstance(layers, list):
            raise ImageLayoutError(f"manifest {manifest.digest[:19]}… has no layers list")
        for layer in layers:
            desc = check_descriptor(layer, "layer")
            blobs.setdefault(desc["digest"], desc)
    return _Graph(top=top, children=tuple(children), blobs=tuple(blobs.values()))


def _label(desc: dict[str, Any]) -> str:
    title = (desc.get("annotations") or {}).get("org.opencontainers.image.title")
    media = desc["mediaType"]
    kind = "config" if "config" in media else ("signature" if "cosign" in media or "dsse" in media else "layer")
    return f"{title or kind} {desc['digest'][7:19]}"


# --- push --------------------------------------------------------------------------------------
def _with_digest(location: str, digest: str) -> str:
    parts = urllib.parse.urlsplit(location)
    query = parts.query + ("&" if parts.query else "") + urllib.parse.urlencode({"digest": digest})
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _location(resp: Any, what: str) -> str:
    loc = resp.header("Location")
    if not loc:
        raise ImageError(f"registry gave no upload location for {what}")
    return str(loc)


class _Counter:
    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self.on_bytes, self.count = on_bytes, 0

    def __call__(self, n: int) -> None:
        self.count += n
        self.on_bytes(n)

    def set(self, value: int) -> None:
        self(value - self.count)


class _RestartUpload(Exception):
    pass


def _upload_chunked(client: RegistryClient, repo: str, location: str, path: Path, size: int,
                    chunk_size: int, counter: _Counter) -> str:
    offset = 0
    failures = 0
    scopes: dict[str, Any] = {"repository": repo, "actions": ("pull", "push")}
    while offset < size:
        n = min(chunk_size, size - offset)
        try:
            resp = client.request("PATCH", location, **scopes, body=FileSlice(path, offset, n, counter),
                                  headers={"Content-Type": "application/octet-stream",
                                           "Content-Range": f"{offset}-{offset + n - 1}"},
                                  expect=(202,), what=f"upload chunk at {offset}", retry=False)
            resp.read()
            location = _location(resp, "chunk")
            offset = _upload_offset(resp, offset + n)
        except RegistryUnavailableError:
            failures += 1
            if failures > client.options.retries:
                raise
            client.pause(failures - 1)
            # Ask the registry how much of the session it kept and go on from there. Some
            # registries (distribution among them) invalidate a session whose PATCH broke off;
            # then the whole blob starts again in a new session.
            try:
                status = client.request("GET", location, **scopes, expect=(204,), what="upload status")
            except ImageError as exc:
                raise _RestartUpload(str(exc)) from exc
            status.read()
            location = _location(status, "upload status")
            offset = _upload_offset(status, 0)
        counter.set(offset)
    return location


def _upload_offset(resp: Any, default: int) -> int:
    """The next byte to send, from the ``Range: 0-N`` header of an upload session."""
    rng = resp.header("Range")
    if not rng or "-" not in rng:
        return default
    with contextlib.suppress(ValueError):
        start, end = (int(x) for x in rng.split("-", 1))
        return end + 1 if end > 0 or start > 0 else 0
    return default


def upload_blob(client: RegistryClient, repo: str, desc: dict[str, Any], path: Path, *,
                settings: TransferSettings, on_bytes: Callable[[int], None]) -> str:
    """Make blob ``desc`` exist in ``repo``: ``existing``, ``mounted`` or ``uploaded``."""
    digest, size = desc["digest"], int(desc["size"])
    if client.blob_exists(repo, digest, actions=("pull", "push")):
        return "existing"
    counter = _Counter(on_bytes)
    scopes: dict[str, Any] = {"repository": repo, "actions": ("pull", "push")}
    failures = 0
    while True:
        try:
            location = None
            for src in settings.mount_from:
                query = urllib.parse.urlencode({"mount": digest, "from": src})
                resp = client.request("POST", f"/v2/{repo}/blobs/uploads/?{query}", **scopes,
                                      extra_scopes=(f"repository:{src}:pull",), expect=(201, 202),
                                      what=f"mount of {digest[:19]}… from {src}")
                resp.read()
                if resp.status == 201:
                    return "mounted"
                location = _location(resp, "mount")
                break
            if location is None:
                resp = client.request("POST", f"/v2/{repo}/blobs/uploads/", **scopes, expect=(202,),
                                      what=f"upload of {digest[:19]}…")
                resp.read()
                location = _location(resp, "upload")
            if size <= settings.monolithic_max:
                resp = client.request("PUT", _with_digest(location, digest), **scopes,
                                      body=FileSlice(path, 0, size, counter),
                                      headers={"Content-Type": "application/octet-stream"},
                                      expect=(201,), what=f"upload of {digest[:19]}…", retry=False)
                resp.read()
            else:
                location = _upload_chunked(client, repo, location, path, size, settings.chunk_size, counter)
                resp = client.request("PUT", _with_digest(location, digest), **scopes, expect=(201,),
                                      what=f"upload of {digest[:19]}…")
                resp.read()
            return "uploaded"
        except (RegistryUnavailableError, _RestartUpload) as exc:
            failures += 1
            if failures > client.options.retries:
                if isinstance(exc, _RestartUpload):
                    raise RegistryUnavailableError(f"upload of {digest[:19]}… keeps breaking off: {exc}") from exc
                raise
            counter.set(0)  # a fresh upload session starts from byte 0
            client.pause(failures - 1)


def _put_manifest(client: RegistryClient, repo: str, reference: str, manifest: Manifest) -> None:
    resp = client.request("PUT", f"/v2/{repo}/manifests/{reference}", repository=repo, actions=("pull", "push"),
                          body=manifest.data, headers={"Content-Type": manifest.media_type},
                          expect=(201,), what=f"manifest {reference}")
    resp.read()


def _push_graph(source: LayoutSource, graph: _Graph, client: RegistryClient, repo: str, tag: str,
                settings: TransferSettings, progress: TransferProgress, result: PushResult) -> None:
    # Check every blob of the layout before sending anything: a corrupt folder pushes nothing.
    paths = {desc["digest"]: source.layout.verify_blob_file(desc["digest"]) for desc in graph.blobs}
    for desc in graph.blobs:
        label = _label(desc)
        advance = progress.start(label, int(desc["size"]))
        outcome = "failed"
        try:
            outcome = upload_blob(client, repo, desc, paths[desc["digest"]], settings=settings, on_bytes=advance)
        finally:
            progress.finish(label, outcome)
        if outcome == "uploaded":
            result.blobs_uploaded += 1
            result.bytes_uploaded += int(desc["size"])
        elif outcome == "mounted":
            result.blobs_mounted += 1
        else:
            result.blobs_existing += 1
    for child in graph.children:
        if client.manifest_exists(repo, child.digest) is None:
            _put_manifest(client, repo, child.digest, child)
        result.manifests += 1
    _put_manifest(client, repo, tag, graph.top)
    result.manifests += 1


def push_layout(layout: str | Path, ref: Reference, *, options: RegistryOptions | None = None,
                settings: TransferSettings | None = None, progress: TransferProgress | None = None,
                tag: str | None = None, include_signatures: bool = True) -> PushResult:
    """Push the image of an OCI layout folder to ``ref`` (its tag, else the layout's own tag)."""
    source = LayoutSource(layout, tag)
    settings = settings or TransferSettings()
    progress = progress or _NoProgress()
    desc = source.layout.find(tag)
    top = source.resolve()
    push_tag = ref.tag or OciLayout.ref_name(desc) or _version_of(top)
    if ref.digest and ref.digest != top.digest:
        raise ImageError(f"{ref} names digest {ref.digest[:19]}…, the layout holds {top.digest[:19]}…")
    if not push_tag:
        raise ImageError(f"no tag to push {layout} under", hint="add :TAG to the reference")
    graph = _graph(source, top)
    with RegistryClient(ref.api_host, options) as client:
        result = PushResult(reference=str(ref.with_tag(push_tag).with_digest(top.digest)), digest=top.digest,
                            tag=push_tag)
        _push_graph(source, graph, client, ref.repository, push_tag, settings, progress, result)
        if include_signatures and (sig := source.signatures(top.digest)) is not None:
            sig_graph = _Graph(top=sig, children=(), blobs=_graph(source, sig).blobs)
            _push_graph(source, sig_graph, client, ref.repository, signature_tag(top.digest), settings,
                        progress, result)
            result.signatures += 1
        att_desc = source.layout.find_tag(attestation_tag(top.digest)) if include_signatures else None
        if att_desc:
            att = source.manifest(att_desc["digest"])
            att_graph = _Graph(top=att, children=(), blobs=_graph(source, att).blobs)
            _push_graph(source, att_graph, client, ref.repository, attestation_tag(top.digest), settings,
                        progress, result)
            result.attestations += 1
        result.requests = client.requests
    return result


def push(layout: str | Path, reference: str, *, options: RegistryOptions | None = None,
         progress: TransferProgress | None = None) -> PushResult:
    """Push the image in an OCI layout folder (what ``package`` writes) to ``reference``
    (``host[:port]/repository[:tag]``; without a tag, the layout's own), as ``edgekit push``."""
    return push_layout(layout, parse_reference(reference), options=options, progress=progress)


def _version_of(top: Manifest) -> str | None:
    ann = top.json().get("annotations") or {}
    version = ann.get(ANN_VERSION) if isinstance(ann, dict) else None
    return version if isinstance(version, str) else None


# --- pull --------------------------------------------------------------------------------------
def _fetch_graph(source: ImageSource, graph: _Graph, writer: LayoutWriter, progress: TransferProgress,
                 result: PullResult) -> None:
    for manifest in (graph.top, *graph.children):
        writer.add_bytes(manifest.data)
    for desc in graph.blobs:
        digest = desc["digest"]
        if writer.has_blob(digest):
            continue
        label = _label(desc)
        advance = progress.start(label, int(desc["size"]))
        tmp = writer.temp_file(digest[7:])
        outcome = "failed"
        try:
            source.fetch_blob(digest, tmp, size=int(desc["size"]), on_bytes=advance)
            outcome = "downloaded"
        finally:
            progress.finish(label, outcome)
        writer.add_file(tmp, digest)
        result.blobs += 1
        result.bytes_downloaded += int(desc["size"])


def _attestations(source: RegistrySource, digest: str) -> Manifest | None:
    try:
        return source.client.get_manifest(source.ref.repository, attestation_tag(digest))
    except ImageNotFoundError:
        return None


def pull_image(ref: Reference, dest: str | Path, *, options: RegistryOptions | None = None,
               progress: TransferProgress | None = None, force: bool = False, public_key: Any = None,
               require_signature: bool = False, include_signatures: bool = True) -> PullResult:
    """Pull ``ref`` (all platforms, and its cosign signatures) into an OCI layout folder."""
    from edgekit.errors import ConfigError

    if require_signature and public_key is None:
        raise ConfigError("--require-signature needs --key", field="--key")
    progress = progress or _NoProgress()
    source = RegistrySource(ref, options)
    try:
        top = source.resolve()
        if public_key is not None:
            verify_image_signatures(source, top.digest, public_key)
        graph = _graph(source, top)
        tag = ref.tag or _version_of(top) or "latest"
        with LayoutWriter(dest, force=force) as writer:
            result = PullResult(reference=str(ref), digest=top.digest, path=Path(dest), tag=tag)
            result.platforms = [
                f"{(e.get('platform') or {}).get('os')}/{(e.get('platform') or {}).get('architecture')}"
                for e in (top.json().get("manifests") or [])] if graph.children else []
            _fetch_graph(source, graph, writer, progress, result)
            entries = [{"mediaType": top.media_type, "digest": top.digest, "size": len(top.data),
                        "annotations": {ANN_REF_NAME: tag}}]
            if include_signatures and (sig := source.signatures(top.digest)) is not None:
                _fetch_graph(source, _graph(source, sig), writer, progress, result)
                entries.append({"mediaType": sig.media_type, "digest": sig.digest, "size": len(sig.data),
                                "annotations": {ANN_REF_NAME: signature_tag(top.digest)}})
                result.signatures = 1
            if include_signatures and (att := _attestations(source, top.digest)) is not None:
                _fetch_graph(source, _graph(source, att), writer, progress, result)
                entries.append({"mediaType": att.media_type, "digest": att.digest, "size": len(att.data),
                                "annotations": {ANN_REF_NAME: attestation_tag(top.digest)}})
                result.attestations = 1
            writer.commit(entries)
        return result
    finally:
        source.close()
