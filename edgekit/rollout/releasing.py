"""The release policy at the registry: read a policy file, fetch and verify the image's quantization
attestation, judge it with ``edgekit.rollout.policy``. Talks to the registry only, never to the
cluster, so a refusal leaves every node as it was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from edgekit_agent.errors import PublicKeyRequiredError
from edgekit_agent.oci.reference import parse_reference
from edgekit_agent.oci.registry import RegistryOptions
from edgekit_agent.oci.sources import open_source

from edgekit.errors import AttestationInvalidError, AttestationMissingError, ConfigError, DigestRequiredError
from edgekit.image.attesting import verify_attestation
from edgekit.rollout.policy import AttestationEvidence, ReleasePolicy, Verdict, decide, parse_policy, refusal_error

__all__ = ["Release", "check_release", "read_policy_file"]


def read_policy_file(path: str | Path) -> ReleasePolicy:
    """A policy from a YAML or JSON file (JSON is YAML)."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the policy file: {exc.strerror}", field=where) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("the policy file is not text", field=where) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not YAML or JSON: {' '.join(str(exc).split())[:160]}", field=where) from exc
    return parse_policy(data, where=where)


@dataclass(frozen=True)
class Release:
    """A passed policy check: the digest it judged (roll out exactly this one) and what passed."""

    image: str  # repository@digest
    digest: str
    verdict: Verdict
    key_id: str | None


def check_release(image: str, policy: ReleasePolicy, public_key: Any, *,
                  options: RegistryOptions | None = None) -> Release:
    """Pin ``image`` to its digest, verify its quantization attestation with ``public_key`` and judge
    it. Raises the ``ReleasePolicyError`` of the first refusal; returns the pinned image otherwise."""
    ref = parse_reference(image)
    source = open_source(image, options)
    try:
        top = source.resolve()
    finally:
        source.close()
    if ref.digest and top.digest != ref.digest:
        raise DigestRequiredError(f"registry answered digest {top.digest} for {image}")
    pinned = f"{ref.name}@{top.digest}"
    key_id = None
    if public_key is None:
        if policy.require_attestation:
            raise PublicKeyRequiredError("the release policy requires an attestation, which only a public key "
                                         "can verify", hint="pass --public-key FILE (the key that signed it)")
        evidence = AttestationEvidence("missing", detail="no public key to verify an attestation with")
    else:
        try:
            report = verify_attestation(pinned, public_key, options=options, digest=top.digest)
            evidence, key_id = AttestationEvidence("verified", report.predicate), report.key_id
        except AttestationMissingError as exc:
            evidence = AttestationEvidence("missing", detail=exc.message)
        except AttestationInvalidError as exc:
            evidence = AttestationEvidence("invalid", detail=exc.message)
    verdict = decide(policy, evidence)
    if not verdict.ok:
        raise refusal_error(image, verdict)
    return Release(image=pinned, digest=top.digest, verdict=verdict, key_id=key_id)
