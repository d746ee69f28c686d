"""Signed chains kept for image volumes: the registry is asked once per image, not at every load.

A model mounted as a Kubernetes image volume is read-only and has no ``.edgekit-image/``. With a
key and a pinned ``image`` the agent fetches that image's chain (signature payload and signature,
index, platform manifest, config) from the registry once, verifies the signature with the key,
and keeps the bytes exactly as fetched in ``<chain_dir>/<digest hex>/.edgekit-image/`` (the layout
of ``edgekit_agent.provenance``), written to a temporary folder (0700, files 0600) and renamed into
place. Every later load reads the kept chain and checks it with the key alone, no network
(``check_chain``), exactly like a fetched folder's.

Chains of images a device no longer runs are removed: after each successful load the agent keeps
the chains of the digests in use (the served model, the shadow) and the most recently used other
one, so a rollback to the previous model still verifies offline (``prune_kept_chains``). A load
marks its chain used (its folder's mtime). Chains are only ever renamed into place whole, and
removal renames one out of the way in one step before deleting it, so no load ever sees a half-
written or half-deleted chain; the agent loads one model at a time and never removes the chain of
one it runs. (A ``verify --chain-dir`` of a chain removed under it fails as if it were missing.)

A kept chain is only bytes to verify again. One that does not verify (tampered, damaged, or signed
with a key that has since been replaced) is refused, ``ProvenanceError`` (exit 80), and NOT
fetched again on its own: whoever can write ``chain_dir`` could otherwise make the agent go to the
network at will. Deleting the folder the error names is the way out; the next load fetches it
once more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from edgekit_agent.errors import ModelRejectedError, ProvenanceError
from edgekit_agent.modelmeta import ModelMetadata
from edgekit_agent.provenance import ImageChain, Provenance, check_chain, read_chain, write_chain

__all__ = ["chains_to_remove", "fetch_chain", "keep_chain", "kept_chain_folder", "prune_kept_chains",
           "verify_with_kept_chain"]

_HEX = frozenset("0123456789abcdef")

log = logging.getLogger("edgekit_agent")


def kept_chain_folder(chain_dir: str | os.PathLike[str], digest: str) -> Path:
    """``<chain_dir>/<hex>`` for ``sha256:<hex>``; refuses anything else (it becomes a path)."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not _is_hex_digest(hexpart):
        raise ModelRejectedError(f"{digest!r} is not a sha256 image digest")
    return Path(chain_dir) / hexpart


def fetch_chain(image: str, public_key: Any, *, options: Any = None) -> ImageChain:
    """The chain of the pinned ``image`` as the registry serves it, its signature verified with the key."""
    from edgekit_agent.oci import open_source, resolve_image, verify_image_signatures

    digest = image.rsplit("@", 1)[1]
    source = open_source(image, options)
    try:
        report = verify_image_signatures(source, digest, public_key)
        resolved = resolve_image(source)
    finally:
        source.close()
    if resolved.digest != digest:
        raise ModelRejectedError(f"{image} resolved to {resolved.digest}, not the pinned digest")
    index = resolved.top.data if resolved.top.digest != resolved.manifest.digest else None
    return ImageChain(image=image, index=index, manifest=resolved.manifest.data, config=resolved.config_bytes,
                      payload=report.payload, signature=report.signature)


def keep_chain(folder: Path, chain: ImageChain) -> None:
    """Write ``chain`` to ``folder`` atomically: a private temporary folder, then one rename.
    A folder another process kept meanwhile wins (both came from the same signed digest).
    ``chain_dir`` is made when missing, its parent (the spool volume) is not."""
    folder.parent.mkdir(mode=0o700, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))  # 0700
    try:
        write_chain(work, chain, mode=0o600)
        try:
            os.rename(work, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


def _is_hex_digest(text: str) -> bool:
    return len(text) == 64 and all(c in _HEX for c in text)


def verify_with_kept_chain(root: Path, meta: ModelMetadata, image: str, public_key: Any, *,
                           chain_dir: str | os.PathLike[str], options: Any = None,
                           fetch: bool = True) -> Provenance:
    """Tie the chain-less folder ``root`` to the signed ``image`` with the chain kept in ``chain_dir``,
    fetching and keeping it first when there is none (``fetch=False``: ``ProvenanceError`` instead,
    no network). See the module doc."""
    digest = image.rsplit("@", 1)[1]
    folder = kept_chain_folder(chain_dir, digest)
    if folder.is_dir():
        try:
            chain = read_chain(folder)
            if chain is None:
                raise ProvenanceError(f"{folder} holds no kept chain")
            if chain.digest != digest:
                raise ProvenanceError(f"{folder} keeps the chain of {chain.digest[:19]}…, not of {digest[:19]}…")
            provenance = check_chain(root, chain, meta, public_key=public_key)
            with contextlib.suppress(OSError):  # a read-only chain_dir still verifies; it only ages
                os.utime(folder)  # used now: pruning keeps the most recently used
            return provenance
        except ProvenanceError as exc:
            raise ProvenanceError(f"{exc.message} (kept chain {folder})",
                                  hint=f"if the model folder is intact, the kept chain is damaged or was signed "
                                       f"with another key: delete {folder} and the next load fetches it "
                                       f"again") from exc
    if not fetch:
        raise ProvenanceError(f"{root} is not tied to a signed image: no chain of {digest[:19]}… is kept in "
                              f"{chain_dir}",
                              hint="the agent keeps it at the first load of that image (in <spool_dir>/chains "
                                   "unless chain_dir says otherwise); name that folder, or load once with the "
                                   "registry reachable")
    chain = fetch_chain(image, public_key, options=options)
    try:
        keep_chain(folder, chain)
    except OSError as exc:
        # still verified, only not kept: the next load asks the registry again
        log.warning("cannot keep the chain of %s in %s: %s", image, folder, exc.strerror or exc)
    return check_chain(root, chain, meta, public_key=public_key)


# --- removing the chains of images no longer run ------------------------------------------------------
def chains_to_remove(kept: Mapping[str, float], in_use: Collection[str], *, previous: int = 1) -> list[str]:
    """Of the kept chains (folder name -> last use, as an mtime), the ones to remove: all but those
    ``in_use`` and the ``previous`` most recently used others (a rollback verifies offline)."""
    others = sorted((name for name in kept if name not in in_use), key=lambda n: (-kept[n], n))
    return sorted(others[max(previous, 0):])


def prune_kept_chains(chain_dir: str | os.PathLike[str], in_use: Iterable[str], *,
                      previous: int = 1) -> list[Path]:
    """Remove the kept chains of ``chain_dir`` but those of the ``in_use`` digests and the
    ``previous`` most recently used others; returns what was removed. Temporary folders of a chain
    being kept are left alone; removal leftovers (a crash mid-delete) go too."""
    root = Path(chain_dir)
    keep = {d.partition(":")[2] for d in in_use}
    kept: dict[str, float] = {}
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    leftovers = []
    for entry in entries:
        if _is_hex_digest(entry.name) and entry.is_dir(follow_symlinks=False):
            kept[entry.name] = entry.stat(follow_symlinks=False).st_mtime
        elif entry.name.startswith(".") and ".del-" in entry.name:
            leftovers.append(Path(entry.path))
    removed = []
    for name in chains_to_remove(kept, keep, previous=previous):
        folder = root / name
        # one rename takes it out of sight whole: never a half-deleted chain at its path
        doomed = root / f".{name}.del-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(folder, doomed)
        except OSError as exc:
            log.warning("cannot remove the kept chain %s: %s", folder, exc.strerror or exc)
            continue
        leftovers.append(doomed)
        removed.append(folder)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        log.info("removed %d kept chain(s) of images no longer run: %s", len(removed),
                 ", ".join(p.name[:12] for p in removed))
    return removed
