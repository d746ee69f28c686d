"""JSON nested deeper than the interpreter recurses, from each place hostile JSON comes in: every
one fails in its own one-line error, none with a RecursionError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from edgekit_agent import safejson
from edgekit_agent.benching import BenchRequestError, DeviceBench, parse_bench_request
from edgekit_agent.errors import ImageLayoutError, ModelMetadataError
from edgekit_agent.modelmeta import load_metadata
from edgekit_agent.oci.mediatypes import parse_json_object
from edgekit_agent.settings import AgentSettings

from edgekit.errors import SigningKeyError
from edgekit.image.attestations import open_envelope
from edgekit.image.signing import decrypt_cosign_key

DEEP = b"[" * 100_000
SERVED = f"registry.example:5000/models/digits@sha256:{'a' * 64}"


def test_safejson_turns_depth_into_a_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        safejson.loads(DEEP)
    with pytest.raises(json.JSONDecodeError):
        safejson.loads(b"{")
    assert safejson.loads(b'{"a": [1, 2]}') == {"a": [1, 2]}
    # the plain decoder is what needed it
    with pytest.raises(RecursionError):
        json.loads(DEEP)


def test_a_deep_bench_request_is_rejected_with_an_answer() -> None:
    settings = AgentSettings(device="d1", group="g", app="det", image=SERVED, public_key="k.pub")
    with pytest.raises(BenchRequestError, match="not JSON: nested too deeply"):
        parse_bench_request(b"[" * 16_000, settings)
    sent: list[dict[str, object]] = []
    bench = DeviceBench(settings, served=lambda: None, publish=sent.append)
    assert bench.submit(b"[" * 16_000) == "rejected"
    assert sent and "nested too deeply" in str(sent[-1].get("detail"))


def test_a_deep_manifest_is_an_image_layout_error() -> None:
    with pytest.raises(ImageLayoutError, match="manifest is not valid JSON: nested too deeply"):
        parse_json_object(DEEP, "manifest")


def test_a_deep_metadata_file_is_a_metadata_error(tmp_path: Path) -> None:
    (tmp_path / "edgekit.json").write_bytes(DEEP)
    with pytest.raises(ModelMetadataError, match="is not valid JSON: nested too deeply"):
        load_metadata(tmp_path)


def test_a_deep_attestation_is_not_an_envelope() -> None:
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    claim = open_envelope(DEEP, pub)
    assert not claim.signed and claim.problem == "not a DSSE envelope"


def test_a_deep_key_file_is_not_a_key() -> None:
    with pytest.raises(SigningKeyError, match="is not a valid cosign key envelope"):
        decrypt_cosign_key(DEEP, b"pw", "cosign.key")
