"""Keys and signatures: ``keygen``, ``sign``, ``verify`` (cosign-compatible, keyed).

Keys are ECDSA P-256. ``keygen`` writes cosign's own encrypted format by default
(``ENCRYPTED SIGSTORE PRIVATE KEY``: scrypt N=2^16,r=8,p=1 + NaCl secretbox around PKCS#8
DER, the JSON envelope of go-securesystemslib's ``encrypted`` package), so the same key works
with ``cosign sign --key``; ``--format pkcs8`` writes a standard encrypted PKCS#8 PEM instead.
Signing reads either, plus cosign's older ``ENCRYPTED COSIGN PRIVATE KEY`` and unencrypted
PKCS#8/SEC1 PEM. The password comes from ``EDGEKIT_KEY_PASSWORD`` (or cosign's
``COSIGN_PASSWORD``) or a prompt. A key anyone who reads the file could use (unencrypted, or
encrypted with an empty password) is refused unless the caller allows it explicitly
(``--allow-unencrypted-key``, ``EDGEKIT_ALLOW_UNENCRYPTED_KEY=1``): the release key signs what
every device will run.

A signature is what ``cosign sign --key`` makes: a simple-signing payload naming the image
digest, signed with ECDSA-SHA256 (DER, base64 in the ``dev.cosignproject.cosign/signature``
layer annotation), as a layer of the OCI manifest tagged ``sha256-<hex>.sig``. Signing again
adds a layer to that manifest; the same signature twice is stored once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from edgekit_agent import safejson
from edgekit_agent.errors import ImageNotFoundError
from edgekit_agent.oci.mediatypes import (
    COSIGN_SIGNATURE_ANNOTATION,
    OCI_CONFIG,
    OCI_MANIFEST,
    SIMPLESIGNING,
    canonical_json,
    sha256_digest,
    signature_tag,
)
from edgekit_agent.oci.reference import Reference
from edgekit_agent.oci.registry import Manifest, RegistryClient, RegistryOptions
from edgekit_agent.oci.signatures import (
    SignatureReport,
    key_fingerprint,
    load_public_key,
    signature_layers,
    simple_signing_payload,
    verify_image_signatures,
)
from edgekit_agent.oci.sources import RegistrySource, open_source

from edgekit.errors import ConfigError, OutputError, SigningKeyError

__all__ = [
    "ALLOW_UNENCRYPTED_ENV",
    "PASSWORD_ENV",
    "SignResult",
    "decrypt_cosign_key",
    "encrypt_cosign_key",
    "generate_keypair",
    "load_private_key",
    "password_from_env",
    "sign_image",
    "unencrypted_allowed_from_env",
    "verify_image",
    "write_keypair",
]

PASSWORD_ENV = "EDGEKIT_KEY_PASSWORD"
ALLOW_UNENCRYPTED_ENV = "EDGEKIT_ALLOW_UNENCRYPTED_KEY"
COSIGN_PASSWORD_ENV = "COSIGN_PASSWORD"
SIGSTORE_PEM = "ENCRYPTED SIGSTORE PRIVATE KEY"
COSIGN_PEM = "ENCRYPTED COSIGN PRIVATE KEY"
# go-securesystemslib's accepted scrypt parameter sets (legacy, standard, OWASP)
_SCRYPT_PARAMS = ({"N": 32768, "r": 8, "p": 1}, {"N": 65536, "r": 8, "p": 1}, {"N": 131072, "r": 8, "p": 1})

PasswordSource = Callable[[bool], bytes]  # (confirm) -> password


def password_from_env() -> bytes | None:
    for name in (PASSWORD_ENV, COSIGN_PASSWORD_ENV):
        if (value := os.environ.get(name)) is not None:
            return value.encode()
    return None


def unencrypted_allowed_from_env() -> bool:
    return os.environ.get(ALLOW_UNENCRYPTED_ENV, "").strip().lower() in ("1", "true", "yes")


_ALLOW_HINT = f"pass --allow-unencrypted-key (or set {ALLOW_UNENCRYPTED_ENV}=1) to use it anyway"


# --- cosign's encrypted key envelope --------------------------------------------------------------
def _scrypt(password: bytes, salt: bytes, params: dict[str, int]) -> bytes:
    n, r, p = params["N"], params["r"], params["p"]
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p, dklen=32)


def encrypt_cosign_key(der: bytes, password: bytes) -> bytes:
    """go-securesystemslib ``encrypted.Encrypt``: the JSON that goes inside the PEM block."""
    from nacl.secret import SecretBox

    params = _SCRYPT_PARAMS[1]
    salt, nonce = secrets.token_bytes(32), secrets.token_bytes(24)
    box = SecretBox(_scrypt(password, salt, params))
    ciphertext = box.encrypt(der, nonce).ciphertext
    doc = {"kdf": {"name": "scrypt", "params": params, "salt": base64.b64encode(salt).decode()},
           "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
           "ciphertext": base64.b64encode(ciphertext).decode()}
    return json.dumps(doc, separators=(",", ":")).encode()


def decrypt_cosign_key(envelope: bytes, password: bytes, where: str) -> bytes:
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    try:
        doc = safejson.loads(envelope)
        kdf, cipher = doc["kdf"], doc["cipher"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise SigningKeyError(f"{where}: unsupported key encryption {kdf['name']}/{cipher['name']}")
        params = {"N": int(kdf["params"]["N"]), "r": int(kdf["params"]["r"]), "p": int(kdf["params"]["p"])}
        salt = base64.b64decode(kdf["salt"])
        nonce = base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(doc["ciphertext"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SigningKeyError(f"{where} is not a valid cosign key envelope") from exc
    if params not in _SCRYPT_PARAMS:
        raise SigningKeyError(f"{where}: unsupported scrypt parameters {params}")
    try:
        return bytes(SecretBox(_scrypt(password, salt, params)).decrypt(ciphertext, nonce))
    except CryptoError as exc:
        raise SigningKeyError(f"wrong password for {where}",
                              hint=f"set {PASSWORD_ENV} or type the password used at keygen") from exc


def _pem_block(pem: bytes) -> tuple[str, bytes]:
    text = pem.decode("ascii", errors="replace")
    begin = text.find("-----BEGIN ")
    if begin < 0:
        raise SigningKeyError("not a PEM file")
    label_end = text.find("-----", begin + 11)
    label = text[begin + 11:label_end]
    end = text.find(f"-----END {label}-----", label_end)
    if end < 0:
        raise SigningKeyError("truncated PEM block")
    body = "".join(line.strip() for line in text[label_end + 5:end].splitlines() if ":" not in line)
    try:
        return label, base64.b64decode(body)
    except binascii.Error as exc:
        raise SigningKeyError("PEM body is not base64") from exc


def _pem(label: str, data: bytes) -> bytes:
    b64 = base64.b64encode(data).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode()


# --- keys ------------------------------------------------------------------------------------------
def generate_keypair(password: bytes, *, fmt: str = "cosign") -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key pair as (encrypted private PEM, public PEM)."""
    if not password:
        raise ConfigError("an empty password would leave the private key readable by anyone who gets the file",
                          field="password", hint=f"set {PASSWORD_ENV} or type a password at the prompt")
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if fmt == "cosign":
        private = _pem(SIGSTORE_PEM, encrypt_cosign_key(der, password))
    elif fmt == "pkcs8":
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(password))
    else:
        raise ConfigError(f"unknown key format {fmt!r} (cosign or pkcs8)", field="--format")
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def write_keypair(prefix: str | os.PathLike[str], password: bytes, *, fmt: str = "cosign",
                  force: bool = False) -> tuple[Path, Path]:
    """Write ``<prefix>.key`` (mode 0600) and ``<prefix>.pub``; refuse to overwrite unless ``force``."""
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if path.exists() and not force:
            raise OutputError(f"{path} already exists", hint="pass --force to replace it")
    private, public = generate_keypair(password, fmt=fmt)
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = key_path.with_name(key_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private)
        os.replace(tmp, key_path)
        pub_path.write_bytes(public)
    except OSError as exc:
        raise OutputError(f"cannot write the key pair: {exc.strerror}") from exc
    return key_path, pub_path


def load_private_key(path: str | os.PathLike[str], password: PasswordSource | bytes | None = None, *,
                     allow_unencrypted: bool | None = None) -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 private key from cosign's format or encrypted PKCS#8; plain PEM and empty
    passwords only with ``allow_unencrypted`` (None: ``EDGEKIT_ALLOW_UNENCRYPTED_KEY``)."""
    where = str(path)
    if allow_unencrypted is None:
        allow_unencrypted = unencrypted_allowed_from_env()
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read key {where}: {exc.strerror}") from exc

    def get_password() -> bytes:
        if isinstance(password, bytes):
            given = password
        elif password is None:
            env = password_from_env()
            if env is None:
                raise SigningKeyError(f"{where} is encrypted and no password was given",
                                      hint=f"set {PASSWORD_ENV}")
            given = env
        else:
            given = password(False)
        if not given and not allow_unencrypted:
            raise SigningKeyError(f"empty password for {where}: a key with an empty password is as good as "
                                  "unencrypted", hint=f"set {PASSWORD_ENV}; {_ALLOW_HINT}")
        return given

    try:
        label, body = _pem_block(pem)
    except SigningKeyError as exc:
        raise SigningKeyError(f"{where}: {exc.message}") from exc
    key: Any
    if label in (SIGSTORE_PEM, COSIGN_PEM):
        der = decrypt_cosign_key(body, get_password(), where)
        try:
            key = serialization.load_der_private_key(der, password=None)
        except ValueError as exc:
            raise SigningKeyError(f"{where} decrypts to something that is not a private key") from exc
    elif label == "ENCRYPTED PRIVATE KEY":
        try:
            key = serialization.load_pem_private_key(pem, password=get_password())
        except ValueError as exc:
            raise SigningKeyError(f"wrong password for {where} (or a damaged key)",
                                  hint=f"set {PASSWORD_ENV} or type the password used at keygen") from exc
    elif label in ("PRIVATE KEY", "EC PRIVATE KEY"):
        if not allow_unencrypted:
            raise SigningKeyError(f"{where} is not encrypted: anyone who reads the file can sign as you",
                                  hint=f"make an encrypted key with edgekit keygen; {_ALLOW_HINT}")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{where} is not a readable private key") from exc
    elif label == "PUBLIC KEY":
        raise SigningKeyError(f"{where} is a public key", hint="sign with the private .key file")
    else:
        raise SigningKeyError(f"{where} holds a {label!r} PEM block, not a private key")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{where} is not an ECDSA P-256 key")
    return key


# --- signing ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignResult:
    reference: str
    digest: str
    signature_tag: str
    key_id: str
    signatures: int  # in the .sig manifest after signing
    added: bool  # False when this exact signature was already there

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _signature_config(layer_digests: list[str]) -> bytes:
    """The config cosign writes for signature manifests (an empty image config)."""
    config = {"architecture": "", "created": "0001-01-01T00:00:00Z",
              "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
              "rootfs": {"type": "layers", "diff_ids": layer_digests}, "config": {}}
    return canonical_json(config)


def _existing_layers(client: RegistryClient, ref: Reference, tag: str) -> list[dict[str, Any]]:
    try:
        manifest = client.get_manifest(ref.repository, tag)
    except ImageNotFoundError:
        return []
    return signature_layers(manifest.json())


def _put_blob(client: RegistryClient, repo: str, data: bytes) -> str:
    digest = sha256_digest(data)
    if client.blob_exists(repo, digest, actions=("pull", "push")):
        return digest
    resp = client.request("POST", f"/v2/{repo}/blobs/uploads/", repository=repo, actions=("pull", "push"),
                          expect=(202,), what="signature upload")
    resp.read()
    location = resp.header("Location") or ""
    sep = "&" if "?" in location else "?"
    resp = client.request("PUT", f"{location}{sep}digest={digest}", repository=repo, actions=("pull", "push"),
                          body=data, headers={"Content-Type": "application/octet-stream"}, expect=(201,),
                          what="signature upload")
    resp.read()
    return digest


def sign_image(ref: Reference, key: ec.EllipticCurvePrivateKey, *, options: RegistryOptions | None = None,
               annotations: dict[str, Any] | None = None) -> SignResult:
    """Sign the image ``ref`` resolves to (its index digest) and store the signature beside it."""
    with RegistryClient(ref.api_host, options) as client:
        digest = ref.digest or client.get_manifest(ref.repository, ref.identifier).digest
        if ref.digest:
            client.get_manifest(ref.repository, ref.digest)  # must exist: refuse to sign a typo
        payload = simple_signing_payload(ref.name, digest, annotations)
        signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
        tag = signature_tag(digest)
        layers = _existing_layers(client, ref, tag)
        payload_digest = sha256_digest(payload)
        pub = key.public_key()
        duplicate = any(layer["digest"] == payload_digest and _same_key(pub, payload, layer) for layer in layers)
        if not duplicate:
            _put_blob(client, ref.repository, payload)
            layers.append({"mediaType": SIMPLESIGNING, "digest": payload_digest, "size": len(payload),
                           "annotations": {COSIGN_SIGNATURE_ANNOTATION: signature}})
            config = _signature_config([layer["digest"] for layer in layers])
            _put_blob(client, ref.repository, config)
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
                        "layers": layers}
            data = canonical_json(manifest)
            resp = client.request("PUT", f"/v2/{ref.repository}/manifests/{tag}", repository=ref.repository,
                                  actions=("pull", "push"), body=data, headers={"Content-Type": OCI_MANIFEST},
                                  expect=(201,), what=f"signature manifest {tag}")
            resp.read()
        return SignResult(reference=str(ref.with_digest(digest)), digest=digest, signature_tag=tag,
                          key_id=key_fingerprint(pub), signatures=len(layers), added=not duplicate)


def _same_key(pub: ec.EllipticCurvePublicKey, payload: bytes, layer: dict[str, Any]) -> bool:
    from edgekit_agent.oci.signatures import verify_payload_signature

    return verify_payload_signature(pub, payload, layer["annotations"][COSIGN_SIGNATURE_ANNOTATION])


def verify_image(target: str, key: Any, *, options: RegistryOptions | None = None) -> tuple[str, SignatureReport]:
    """Verify the cosign signatures of an image in a registry or a layout folder."""
    source = open_source(target, options)
    try:
        top: Manifest = source.resolve()
        if isinstance(source, RegistrySource) and source.ref.digest:
            top = source.manifest(source.ref.digest)
        return top.digest, verify_image_signatures(source, top.digest, load_public_key(key))
    finally:
        source.close()
