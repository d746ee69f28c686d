"""keygen / sign / verify, cosign-compatible: edgekit <-> cosign interop against a real registry."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from edgekit_agent.errors import EdgekitError
from edgekit_agent.oci import fetch_image, parse_reference
from edgekit_agent.oci.mediatypes import COSIGN_SIGNATURE_ANNOTATION, SIMPLESIGNING, signature_tag

from edgekit.image.pushing import push_layout
from edgekit.image.signing import generate_keypair, load_private_key, sign_image, write_keypair
from edgekit.rehearsal.registry import DockerRegistry
from tests.test_images_build import assert_error, invoke, leftovers

pytestmark = pytest.mark.registry

PASSWORD = "correct horse"
ENV = {"EDGEKIT_KEY_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    out: dict[str, Path] = {}
    for name in ("release", "other"):
        result = invoke("keygen", "--output-key-prefix", folder / name, env=ENV)
        assert result.exit_code == 0, result.stderr
        out[name], out[f"{name}.pub"] = folder / f"{name}.key", folder / f"{name}.pub"
    return out


@pytest.fixture
def pushed(registry: DockerRegistry, digits_layout: Path, request: pytest.FixtureRequest) -> str:
    ref = f"{registry.host}/sig/{request.node.name.replace('_', '-').lower()[:50]}:1.0"
    push_layout(digits_layout, parse_reference(ref))
    return ref


def test_keygen_writes_cosign_format(keys: dict[str, Path]) -> None:
    text = keys["release"].read_text()
    assert text.startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    assert keys["release"].stat().st_mode & 0o777 == 0o600
    assert keys["release.pub"].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert load_private_key(keys["release"], PASSWORD.encode()).curve.name == "secp256r1"
    assert_error(invoke("keygen", "--output-key-prefix", keys["release"].with_suffix(""), env=ENV), 16, "--force")


def test_pkcs8_keys_and_wrong_passwords(tmp_path: Path) -> None:
    key, _pub = write_keypair(tmp_path / "p8", b"pw", fmt="pkcs8")
    assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert load_private_key(key, b"pw").curve.name == "secp256r1"
    for path in (key, write_keypair(tmp_path / "cos", b"pw")[0]):
        with pytest.raises(EdgekitError) as info:
            load_private_key(path, b"nope")
        assert info.value.exit_code == 29 and "wrong password" in info.value.one_line()



def test_keys_anyone_could_use_are_refused_unless_allowed(pushed: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgekit.image.signing import SIGSTORE_PEM, _pem, encrypt_cosign_key

    monkeypatch.delenv("EDGEKIT_ALLOW_UNENCRYPTED_KEY", raising=False)
    for fmt in ("cosign", "pkcs8"):
        with pytest.raises(EdgekitError, match="empty password") as info:
            generate_keypair(b"", fmt=fmt)
        assert info.value.exit_code == 2
    assert_error(invoke("keygen", "--output-key-prefix", tmp_path / "k", env={"EDGEKIT_KEY_PASSWORD": ""}), 2,
                 "empty password")
    assert not (tmp_path / "k.key").exists()
    key = ec.generate_private_key(ec.SECP256R1())
    plain = tmp_path / "plain.key"
    plain.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    empty = tmp_path / "empty.key"  # cosign itself lets a key be encrypted with an empty password
    empty.write_bytes(_pem(SIGSTORE_PEM, encrypt_cosign_key(
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()), b"")))
    assert_error(invoke("sign", pushed, "--key", plain, env=ENV), 29, "plain.key is not encrypted")
    assert_error(invoke("sign", pushed, "--key", empty, env={"EDGEKIT_KEY_PASSWORD": ""}), 29,
                 "empty password for")
    assert_error(invoke("package", "model.onnx", "--name", "m", "--version", "1", "--push", pushed,
                        "--sign-key", plain), 29, "not encrypted")
    # allowed explicitly: by the flag or the environment
    signed = invoke("sign", pushed, "--key", plain, "--allow-unencrypted-key", "--output", "json")
    assert signed.exit_code == 0, signed.stderr
    assert load_private_key(empty, b"", allow_unencrypted=True).curve.name == "secp256r1"
    monkeypatch.setenv("EDGEKIT_ALLOW_UNENCRYPTED_KEY", "1")
    again = invoke("sign", pushed, "--key", empty, "--output", "json", env={"EDGEKIT_KEY_PASSWORD": ""})
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["added"] is False  # the same key: already signed


def test_sign_verify_and_the_signature_format(pushed: str, keys: dict[str, Path], registry: DockerRegistry,
                                              tmp_path: Path) -> None:
    signed = invoke("sign", pushed, "--key", keys["release"], "--output", "json", env=ENV)
    assert signed.exit_code == 0, signed.stderr
    info = json.loads(signed.stdout)
    digest = info["digest"]
    assert info["signature_tag"] == signature_tag(digest) and info["signatures"] == 1
    # the stored manifest is what cosign writes: simple-signing layer with the signature annotation
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{pushed.rsplit(':', 1)[0]}:{signature_tag(digest)}"],
                         capture_output=True, check=True)
    manifest = json.loads(raw.stdout)
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == SIMPLESIGNING and COSIGN_SIGNATURE_ANNOTATION in layer["annotations"]
    ok = invoke("verify", pushed, "--key", keys["release.pub"], "--output", "json")
    assert ok.exit_code == 0, ok.stderr
    payload = json.loads(ok.stdout)["payloads"][0]
    assert payload == {"critical": {"identity": {"docker-reference": pushed.rsplit(":", 1)[0]},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": "cosign container image signature"}, "optional": None}
    again = invoke("sign", pushed, "--key", keys["release"], "--output", "json", env=ENV)
    assert json.loads(again.stdout)["signatures"] == 1  # same key, same image: stored once
    assert json.loads(again.stdout)["added"] is False
    assert invoke("sign", pushed, "--key", keys["other"], env=ENV).exit_code == 0
    shown = json.loads(invoke("show", pushed, "--key", keys["release.pub"], "--output", "json").stdout)
    assert shown["signature"]["status"] == "verified" and shown["signature"]["count"] == 2
    # pull carries the signature into the layout; verify and fetch work offline from there
    assert invoke("pull", pushed, "-o", tmp_path / "layout", "--key", keys["release.pub"]).exit_code == 0
    assert invoke("verify", tmp_path / "layout", "--key", keys["release.pub"]).exit_code == 0
    fetched = fetch_image(str(tmp_path / "layout"), tmp_path / "model", public_key=keys["release.pub"])
    assert fetched.signature is not None and fetched.signature.ok
    # and a re-push of that layout elsewhere takes the signature along
    other = f"{registry.host}/sig/copied:1.0"
    assert json.loads(invoke("push", tmp_path / "layout", other, "--output", "json").stdout)["signatures"] == 1
    assert invoke("verify", other, "--key", keys["release.pub"]).exit_code == 0


def test_signature_failures(pushed: str, keys: dict[str, Path], registry: DockerRegistry, digits_model: Path,
                            tmp_path: Path) -> None:
    assert_error(invoke("verify", pushed, "--key", keys["release.pub"]), 26, "is not signed")
    assert_error(invoke("pull", pushed, "-o", tmp_path / "a", "--key", keys["release.pub"], "--require-signature"),
                 26, "is not signed")
    assert_error(invoke("pull", pushed, "-o", tmp_path / "a", "--require-signature"), 2, "--key")
    assert invoke("sign", pushed, "--key", keys["other"], env=ENV).exit_code == 0
    assert_error(invoke("verify", pushed, "--key", keys["release.pub"]), 25, "verifies with key")
    assert_error(invoke("pull", pushed, "-o", tmp_path / "a", "--key", keys["release.pub"]), 25, "verifies")
    assert_error(invoke("pull", pushed, "-o", tmp_path / "a", "--model-folder", "--key", keys["release.pub"]), 25,
                 "verifies")
    with pytest.raises(EdgekitError) as info:
        fetch_image(pushed, tmp_path / "m", public_key=keys["release.pub"])
    assert info.value.exit_code == 25
    assert not (tmp_path / "a").exists() and not (tmp_path / "m").exists() and leftovers(tmp_path) == []
    # a signature copied from another image does not count for this one
    ref = parse_reference(pushed)
    other = parse_reference(f"{registry.host}/sig/elsewhere:2.0")
    assert invoke("package", digits_model, "--name", "digits", "--version", "2.0", "--push", str(other),
                  "--created", "2026-05-05T00:00:00Z").exit_code == 0
    sign_image(other, load_private_key(keys["release"], PASSWORD.encode()))
    out = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--src-tls-verify=false",
                          f"docker://{registry.host}/sig/elsewhere:{signature_tag(_digest(other))}",
                          f"docker://{registry.host}/{ref.repository}:{signature_tag(_digest(ref))}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert_error(invoke("verify", pushed, "--key", keys["release.pub"]), 25, "for another image")
    # key problems
    assert_error(invoke("sign", pushed, "--key", keys["release"], env={"EDGEKIT_KEY_PASSWORD": "x"}), 29,
                 "wrong password")
    assert_error(invoke("sign", pushed, "--key", keys["release.pub"], env=ENV), 29, "public key")
    assert_error(invoke("verify", pushed, "--key", keys["release"]), 29, "not a PEM public key")
    assert_error(invoke("sign", f"{registry.host}/sig/nothing:1.0", "--key", keys["release"], env=ENV), 23,
                 "not found")


def _digest(ref: object) -> str:
    out = invoke("show", str(ref), "--output", "json")
    return str(json.loads(out.stdout)["digest"])


def test_package_push_and_sign_in_one_go(registry: DockerRegistry, digits_model: Path, keys: dict[str, Path]) -> None:
    ref = f"{registry.host}/sig/onego"
    result = invoke("package", digits_model, "--name", "digits", "--version", "4.0", "--push", ref,
                    "--sign-key", keys["release"], "--output", "json", env=ENV)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["signature"]["added"] is True
    assert invoke("verify", f"{ref}:4.0", "--key", keys["release.pub"]).exit_code == 0


# --- cosign interop ----------------------------------------------------------------------------
def _cosign(cosign: Path, tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    # An empty trusted root keeps cosign from looking for Sigstore's TUF repository online.
    trusted_root = tmp_path / "trusted_root.json"
    trusted_root.write_text('{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}')
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", ""), "COSIGN_PASSWORD": PASSWORD,
           "SIGSTORE_NO_CACHE": "true", "TUF_ROOT": str(tmp_path / "tuf")}
    argv = [str(cosign), *map(str, args)]
    if args and args[0] == "verify":
        argv += ["--trusted-root", str(trusted_root)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def test_cosign_verifies_an_edgekit_signature(cosign: Path, pushed: str, keys: dict[str, Path],
                                              tmp_path: Path) -> None:
    result = sign_image(parse_reference(pushed), load_private_key(keys["release"], PASSWORD.encode()))
    by_digest = f"{pushed.rsplit(':', 1)[0]}@{result.digest}"
    out = _cosign(cosign, tmp_path, "verify", "--key", keys["release.pub"], "--insecure-ignore-tlog=true",
                  "--allow-http-registry", by_digest)
    assert out.returncode == 0, out.stderr
    (payload,) = json.loads(out.stdout)
    assert payload["critical"]["image"]["docker-manifest-digest"] == result.digest
    wrong = _cosign(cosign, tmp_path, "verify", "--key", keys["other.pub"], "--insecure-ignore-tlog=true",
                    "--allow-http-registry", by_digest)
    assert wrong.returncode != 0


def test_edgekit_verifies_a_cosign_signature(cosign: Path, pushed: str, keys: dict[str, Path],
                                             tmp_path: Path) -> None:
    made = _cosign(cosign, tmp_path, "generate-key-pair", "--output-key-prefix", tmp_path / "cosign")
    assert made.returncode == 0, made.stderr
    digest = _digest(pushed)
    by_digest = f"{pushed.rsplit(':', 1)[0]}@{digest}"
    signed = _cosign(cosign, tmp_path, "sign", "--key", tmp_path / "cosign.key", "--tlog-upload=false", "--yes",
                     "--allow-http-registry", by_digest)
    assert signed.returncode == 0, signed.stderr
    ok = invoke("verify", pushed, "--key", tmp_path / "cosign.pub", "--output", "json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["digest"] == digest
    assert_error(invoke("verify", pushed, "--key", keys["release.pub"]), 25, "verifies")
    # cosign's own encrypted key signs through edgekit too, and cosign signs with an edgekit key
    assert invoke("sign", pushed, "--key", tmp_path / "cosign.key", env=ENV).exit_code == 0
    signed2 = _cosign(cosign, tmp_path, "sign", "--key", keys["release"], "--tlog-upload=false", "--yes",
                      "--allow-http-registry", by_digest)
    assert signed2.returncode == 0, signed2.stderr
    assert invoke("verify", pushed, "--key", keys["release.pub"]).exit_code == 0
