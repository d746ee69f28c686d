"""The pure parts of the registry client: what answers mean, and how token auth is asked for."""

from __future__ import annotations

import pytest
from edgekit_agent.errors import ImageError, ImageNotFoundError, RegistryAuthError, RegistryUnavailableError
from edgekit_agent.oci.answers import answer_error, registry_message, repository_of, unreachable_error
from edgekit_agent.oci.credentials import Credentials
from edgekit_agent.oci.tokens import basic_authorization, credentials_withheld, token_from_answer, token_request
from edgekit_agent.oci.transport import is_loopback

USER = Credentials("ci", "s3cret")
NAME_UNKNOWN = {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]}


def test_registry_message_and_repository() -> None:
    assert registry_message(NAME_UNKNOWN) == "NAME_UNKNOWN: repository name not known to registry"
    assert registry_message({"errors": [{"code": "DENIED"}]}) == "DENIED"
    assert registry_message({"errors": []}) == registry_message("oops") == ""
    assert repository_of("/v2/team/model/manifests/v1") == "team/model"
    assert repository_of("http://r:5000/v2/m/blobs/sha256:ab") == "m"
    assert repository_of("/v2/") is None


def test_answers_map_onto_the_image_errors() -> None:
    def error(status: int, body: object = None, credentials: Credentials | None = None) -> ImageError:
        return answer_error("r:5000", credentials, status=status, reason="Reason", url="/v2/team/m/manifests/v1",
                            body=body or {}, what="image r:5000/team/m:v1")

    anonymous, refused = error(401), error(401, credentials=USER)
    assert isinstance(anonymous, RegistryAuthError) and "needs credentials" in anonymous.message
    assert isinstance(refused, RegistryAuthError) and "refused the credentials of user 'ci'" in refused.message
    assert error(403, {"errors": [{"code": "DENIED", "message": "no"}]}).message == (
        "registry r:5000 denied image r:5000/team/m:v1: DENIED: no")
    missing_repo, missing_tag = error(404, NAME_UNKNOWN), error(404, {"errors": [{"code": "MANIFEST_UNKNOWN"}]})
    assert isinstance(missing_repo, ImageNotFoundError) and missing_repo.message == "repository r:5000/team/m not found"
    assert missing_tag.message == "image r:5000/team/m:v1 not found"
    other = error(400)
    assert type(other) is ImageError
    assert other.message == "registry r:5000 answered 400 Reason to image r:5000/team/m:v1"


def test_unreachable_error_names_the_cause() -> None:
    refused = unreachable_error("r:5000", ConnectionRefusedError(111, "Connection refused"), 5)
    assert isinstance(refused, RegistryUnavailableError)
    assert refused.message == "cannot reach registry r:5000: Connection refused (after 5 tries)"
    timed_out = unreachable_error("r:5000", TimeoutError(), 1)
    assert timed_out.message == "cannot reach registry r:5000: timed out (after 1 tries)"


def test_token_request_and_answer() -> None:
    url = token_request("r", {"realm": "https://auth.example/token?x=1", "service": "reg"}, ("repository:m:pull",))
    assert (url.scheme, url.netloc, url.path) == ("https", "auth.example", "/token")
    assert url.query == "x=1&service=reg&scope=repository%3Am%3Apull"
    assert token_request("r", {"realm": "http://a/t"}, ()).query == ""
    with pytest.raises(RegistryAuthError, match="without a realm"):
        token_request("r", {"service": "reg"}, ())
    assert token_from_answer("r", None, 200, {"token": "t1"}) == "t1"
    assert token_from_answer("r", None, 200, {"access_token": "t2"}) == "t2"
    with pytest.raises(RegistryAuthError, match="refused user 'ci'"):
        token_from_answer("r", USER, 401, {})
    with pytest.raises(RegistryAuthError, match="refused anonymous access"):
        token_from_answer("r", None, 403, {})
    with pytest.raises(RegistryAuthError, match="answered 500"):
        token_from_answer("r", None, 500, {})
    with pytest.raises(RegistryAuthError, match="sent no token"):
        token_from_answer("r", None, 200, ["token"])
    assert basic_authorization(USER) == "Basic Y2k6czNjcmV0"
    assert basic_authorization(None) is None


@pytest.mark.parametrize(("registry", "realm", "allowed", "why"), [
    ("reg.example", "https://reg.example/token", (), None),
    ("reg.example:5000", "https://reg.example:5001/token", (), None),          # the same host, another port
    ("127.0.0.1:5000", "http://127.0.0.1:5001/token", (), None),               # loopback may be plain HTTP
    ("registry-1.docker.io", "https://auth.docker.io/token", (), None),        # a known token service
    ("registry.gitlab.com", "https://gitlab.com/jwt/auth", (), None),
    ("reg.example", "https://auth.example/token", ("AUTH.example",), None),    # allowlisted
    ("reg.example", "http://reg.example/token", (), "is not HTTPS"),
    ("reg.example", "http://auth.example/token", ("auth.example",), "is not HTTPS"),
    ("reg.example", "https://collector.evil/token", (), "another host"),
    ("127.0.0.1:5000", "http://localhost:5001/token", (), "another host"),
])
def test_credentials_go_only_to_the_registry_s_own_https_realm(registry: str, realm: str, allowed: tuple[str, ...],
                                                                why: str | None) -> None:
    url = token_request(registry, {"realm": realm}, ())
    result = credentials_withheld(registry, url, allowed)
    assert result is None if why is None else why in (result or "")
    if why is not None:
        with pytest.raises(RegistryAuthError, match=f"not sent because its token realm .*{why}") as err:
            token_from_answer(registry, USER, 401, {}, withheld=result)
        assert "EDGEKIT_REGISTRY_TOKEN_HOSTS" in (err.value.hint or "")


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost:5000", True), ("127.0.0.1:5000", True), ("[::1]:5000", True), ("[::1]", True),
    ("registry.example:443", False), ("10.0.0.1", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
