"""The FHIR client's HTTP edge, request by request, with `responses`."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from hypothesis import given
from hypothesis import strategies as st
from responses import matchers

from cds_hooks.errors import FhirAuthError, FhirError, FhirNotAllowed, FhirUnavailable
from cds_hooks.fhir import (
    Allowlist,
    ClientLimits,
    FhirClient,
    bundle_resources,
    follow_link,
    normalise_base,
    same_base,
)
from tests.support.fhir import searchset

BASE = "https://fhir.example.org/r4"
TOKEN = "secret-token-abc123"
QUERY = "Condition?patient=pat-4711"


@pytest.fixture
def client() -> Iterator[FhirClient]:
    with FhirClient(ClientLimits(timeout_s=1.0, max_pages=3, max_entries=10_000)) as c:
        yield c


def condition(i: int) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": "Patient/p"}}


def assert_clean(exc: BaseException) -> None:
    """Error messages name no token, no patient id, no URL and no response body."""
    text = str(exc) + repr(exc) + json.dumps(getattr(exc, "details", []))
    for leak in (TOKEN, "pat-4711", "fhir.example.org", "server-body-secret"):
        assert leak not in text


# --- normalisation and allowlist ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://FHIR.example.org/r4/", "https://fhir.example.org:443/r4"),
        ("https://fhir.example.org:443/r4", "https://fhir.example.org:443/r4"),
        ("http://fhir.example.org", "http://fhir.example.org:80"),
        ("http://[::1]:8080/fhir//", "http://[::1]:8080/fhir"),
    ],
)
def test_normalise_base(url: str, expected: str) -> None:
    assert normalise_base(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://fhir.example.org",
        "https://user:pw@fhir.example.org/r4",
        "https://fhir.example.org/r4?x=1",
        "https://fhir.example.org/r4#f",
        "https:///r4",
        "https://fhir.example.org:99999/r4",
    ],
)
def test_normalise_base_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        normalise_base(url)


# URLs that two parsers read differently: the one that checks (urlsplit) and the one that
# connects (urllib3). Each passed the allowlist once and connected somewhere else.
PARSER_CONFUSION = [
    # urlsplit reads the host as [::1]; urllib3 connects to 127.0.0.1:28099.
    "http://127.0.0.1:28099\\[::1]:28090/fhir/R4",
    "http://[::1]:28090\\@127.0.0.1:28099/fhir/R4",
    "http://[::1]:28090/fhir/R4?",  # an empty query marker
    "http://[::1]:28090/fhir/R4#",  # an empty fragment marker
    "http://u@[::1]:28090/fhir/R4",  # user info, even without a password
    "http://[::1]:28090/fhir/%2e%2e/R4",  # a dot segment a server may decode
    "http://[::1]:28090/fhir R4",  # a space or a control inside
    "http://[::1]:28090\t/fhir/R4",
]


@pytest.mark.parametrize("url", PARSER_CONFUSION)
def test_urls_two_parsers_read_differently_are_refused(url: str) -> None:
    allow = Allowlist(["http://[::1]:28090/fhir/R4", "http://127.0.0.1:28099/fhir/R4"])
    assert not allow.allows(url)
    with pytest.raises(ValueError):
        normalise_base(url)


@pytest.mark.parametrize(
    "link",
    [
        "https://fhir.example.org/r4/../other/Condition?page=2",  # dot segments leave the base
        "https://fhir.example.org/r4/%2E%2E/other/Condition?page=2",
        "https://fhir.example.org\\@attacker.example.net/r4/Condition?page=2",
        "https://attacker.example.net\\fhir.example.org/r4/Condition?page=2",
        "https://fhir.example.org/r4/Condition?",
        "https://token@fhir.example.org/r4/Condition?page=2",
    ],
)
def test_next_links_that_leave_or_blur_the_base_are_not_followed(link: str) -> None:
    assert follow_link(link, BASE) is None
    assert not same_base(link, BASE)


def test_a_next_link_is_requested_as_it_was_checked() -> None:
    assert follow_link(f"{BASE}/./Condition?page=2", BASE) == (
        "https://fhir.example.org/r4/Condition?page=2"
    )


def test_allowlist_compares_normalised_urls() -> None:
    allow = Allowlist.from_setting(" https://fhir.example.org:443/r4/ , http://localhost:8080 ")
    assert allow.allows("https://FHIR.example.org/r4")
    assert allow.allows("http://localhost:8080/")
    assert not allow.allows("https://fhir.example.org/r4b")
    assert not allow.allows("https://fhir.example.org/r4/extra")
    assert not allow.allows("http://fhir.example.org/r4")  # scheme matters
    assert not allow.allows("https://fhir.example.org:8443/r4")
    assert not allow.allows("https://fhir.example.org.evil.test/r4")
    assert not allow.allows("https://user@fhir.example.org/r4")
    assert not Allowlist().allows(BASE)
    with pytest.raises(FhirNotAllowed):
        Allowlist().check(BASE)


def test_malformed_allowlist_setting_names_the_position_only() -> None:
    with pytest.raises(ValueError) as caught:
        Allowlist.from_setting("https://ok.example.org, https://admin:hunter2@bad.example.org")
    assert "entry 2" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_same_base() -> None:
    assert same_base(f"{BASE}/Condition?page=2", BASE)
    assert same_base("https://fhir.example.org:443/r4/Condition", BASE + "/")
    assert not same_base("https://fhir.example.org/r4x/Condition", BASE)
    assert not same_base("https://other.example.org/r4/Condition", BASE)
    assert not same_base("http://fhir.example.org/r4/Condition", BASE)
    assert not same_base("javascript:alert(1)", BASE)


# --- requests and answers ----------------------------------------------------


@responses.activate
def test_search_sends_accept_and_bearer_token(client: FhirClient) -> None:
    responses.get(
        f"{BASE}/{QUERY}",
        json=searchset([condition(1)], match=True),
        match=[
            matchers.header_matcher(
                {"Accept": "application/fhir+json", "Authorization": f"Bearer {TOKEN}"}
            )
        ],
    )
    result = client.fetch(BASE, QUERY, TOKEN)
    assert [r["id"] for r in result.resources] == ["c1"]
    assert result.pages == 1
    assert not result.truncated


@responses.activate
def test_no_token_no_authorization_header(client: FhirClient) -> None:
    responses.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    result = client.fetch(BASE, "Patient/p1", None)
    assert result.resources == [{"resourceType": "Patient", "id": "p1"}]
    assert "Authorization" not in responses.calls[0].request.headers


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, FhirAuthError),
        (403, FhirAuthError),
        (404, FhirError),
        (400, FhirError),
        (500, FhirUnavailable),
        (503, FhirUnavailable),
        (429, FhirUnavailable),
    ],
)
@responses.activate
def test_http_errors_convert_at_the_boundary(
    client: FhirClient, status: int, error: type[Exception]
) -> None:
    responses.get(f"{BASE}/{QUERY}", status=status, body="server-body-secret")
    with pytest.raises(error) as caught:
        client.fetch(BASE, QUERY, TOKEN)
    assert str(status) in str(caught.value)
    assert_clean(caught.value)


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectTimeout("connect https://fhir.example.org/r4/Condition?patient=pat-4711"),
        requests.ReadTimeout("read https://fhir.example.org/r4/Condition?patient=pat-4711"),
        requests.ConnectionError("refused https://fhir.example.org/r4/Condition?patient=pat-4711"),
    ],
)
@responses.activate
def test_transport_failures_are_unavailable(client: FhirClient, failure: Exception) -> None:
    responses.get(f"{BASE}/{QUERY}", body=failure)
    with pytest.raises(FhirUnavailable) as caught:
        client.fetch(BASE, QUERY, TOKEN)
    assert_clean(caught.value)
    assert caught.value.__cause__ is None  # the URL-bearing original is not chained


@pytest.mark.parametrize(
    "body",
    [
        "server-body-secret {not json",
        "[1, 2]",
        '{"no": "resourceType"}',
        "",
        "[" * 100_000,
    ],
)
@responses.activate
def test_answers_that_are_not_fhir_json(client: FhirClient, body: str) -> None:
    responses.get(f"{BASE}/{QUERY}", body=body, content_type="application/fhir+json")
    with pytest.raises(FhirError) as caught:
        client.fetch(BASE, QUERY, TOKEN)
    assert_clean(caught.value)


@responses.activate
def test_operation_outcome_with_200_is_an_error(client: FhirClient) -> None:
    responses.get(f"{BASE}/{QUERY}", json={"resourceType": "OperationOutcome", "issue": []})
    with pytest.raises(FhirError):
        client.fetch(BASE, QUERY, TOKEN)


@responses.activate
def test_redirect_is_not_followed(client: FhirClient) -> None:
    responses.get(
        f"{BASE}/{QUERY}", status=302, headers={"Location": "https://elsewhere.example.net/steal"}
    )
    with pytest.raises(FhirError):
        client.fetch(BASE, QUERY, TOKEN)
    assert len(responses.calls) == 1


@responses.activate
def test_follows_next_pages_on_the_same_base(client: FhirClient) -> None:
    responses.get(
        f"{BASE}/{QUERY}", json=searchset([condition(1)], f"{BASE}/Condition?page=2", match=True)
    )
    responses.get(
        f"{BASE}/Condition?page=2",
        json=searchset([condition(2)], f"{BASE}/Condition?page=3", match=True),
    )
    responses.get(f"{BASE}/Condition?page=3", json=searchset([condition(3)], match=True))
    result = client.fetch(BASE, QUERY, TOKEN)
    assert [r["id"] for r in result.resources] == ["c1", "c2", "c3"]
    assert result.pages == 3
    assert not result.truncated
    assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in responses.calls)


@responses.activate
def test_page_cap(client: FhirClient) -> None:
    for page in range(1, 6):
        responses.get(
            f"{BASE}/Condition?page={page}",
            json=searchset([condition(page)], f"{BASE}/Condition?page={page + 1}", match=True),
        )
    result = client.fetch(BASE, "Condition?page=1", TOKEN)
    assert result.pages == 3  # max_pages
    assert result.truncated
    assert [r["id"] for r in result.resources] == ["c1", "c2", "c3"]
    assert len(responses.calls) == 3


@responses.activate
def test_next_link_to_another_host_is_not_followed(client: FhirClient) -> None:
    responses.get(
        f"{BASE}/{QUERY}",
        json=searchset([condition(1)], "https://attacker.example.net/r4/Condition?p=2", match=True),
    )
    # Any call to another host would fail the test: responses refuses unregistered URLs.
    result = client.fetch(BASE, QUERY, TOKEN)
    assert result.truncated
    assert [r["id"] for r in result.resources] == ["c1"]
    assert len(responses.calls) == 1


@responses.activate
def test_next_link_outside_the_base_path_is_not_followed(client: FhirClient) -> None:
    responses.get(
        f"{BASE}/{QUERY}",
        json=searchset([condition(1)], "https://fhir.example.org/other/Condition?p=2", match=True),
    )
    result = client.fetch(BASE, QUERY, TOKEN)
    assert result.truncated
    assert len(responses.calls) == 1


@responses.activate
def test_relative_next_link_resolves_against_the_page(client: FhirClient) -> None:
    responses.get(f"{BASE}/{QUERY}", json=searchset([condition(1)], "Condition?page=2", match=True))
    responses.get(f"{BASE}/Condition?page=2", json=searchset([condition(2)], match=True))
    result = client.fetch(BASE, QUERY, TOKEN)
    assert [r["id"] for r in result.resources] == ["c1", "c2"]


@responses.activate
def test_five_thousand_entry_bundle(client: FhirClient) -> None:
    responses.get(
        f"{BASE}/{QUERY}", json=searchset([condition(i) for i in range(5000)], match=True)
    )
    started = time.monotonic()
    result = client.fetch(BASE, QUERY, TOKEN)
    assert len(result.resources) == 5000
    assert time.monotonic() - started < 1.0


@responses.activate
def test_entry_cap_truncates() -> None:
    with FhirClient(ClientLimits(max_entries=100)) as capped:
        responses.get(
            f"{BASE}/{QUERY}",
            json=searchset([condition(i) for i in range(150)], f"{BASE}/Condition?p=2", match=True),
        )
        result = capped.fetch(BASE, QUERY, TOKEN)
    assert len(result.resources) == 100
    assert result.truncated
    assert len(responses.calls) == 1


@responses.activate
def test_a_body_of_millions_of_empty_objects_is_refused_before_it_is_parsed(
    client: FhirClient,
) -> None:
    # Under the byte cap, but five million objects: parsing it took seconds and a gigabyte.
    body = b'{"resourceType":"Bundle","type":"searchset","entry":[' + b"{}," * 5_000_000 + b"{}]}"
    assert len(body) < ClientLimits().max_bytes
    responses.get(f"{BASE}/{QUERY}", body=body, content_type="application/fhir+json")
    tracemalloc.start()
    try:
        with pytest.raises(FhirError) as caught:
            client.fetch(BASE, QUERY, TOKEN)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "too large" in str(caught.value)
    # The body and its chunks, never the objects it describes (~400 MB parsed).
    assert peak < 4 * len(body)


@responses.activate
def test_a_31_mb_body_is_over_the_default_cap(client: FhirClient) -> None:
    body = b'{"resourceType":"Bundle","entry":[' + b"{}," * (31 * 1024 * 1024 // 3) + b"{}]}"
    responses.get(f"{BASE}/{QUERY}", body=body, content_type="application/fhir+json")
    with pytest.raises(FhirError) as caught:
        client.fetch(BASE, QUERY, TOKEN)
    assert "too large" in str(caught.value)


@responses.activate
def test_body_size_cap() -> None:
    with FhirClient(ClientLimits(max_bytes=10_000)) as capped:
        responses.get(
            f"{BASE}/{QUERY}", json=searchset([condition(i) for i in range(1000)], match=True)
        )
        with pytest.raises(FhirError) as caught:
            capped.fetch(BASE, QUERY, TOKEN)
    assert "too large" in str(caught.value)


@responses.activate
def test_expired_deadline_makes_no_call(client: FhirClient) -> None:
    with pytest.raises(FhirUnavailable):
        client.fetch(BASE, QUERY, TOKEN, deadline=time.monotonic() - 0.001)
    assert len(responses.calls) == 0


def test_bundle_resources_skips_outcomes_and_junk() -> None:
    page = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": condition(1)},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
            {"resource": {"no": "type"}},
            "junk",
            {"fullUrl": "x"},
        ],
    }
    assert bundle_resources(page) == [condition(1)]
    assert bundle_resources({"resourceType": "Bundle", "entry": "nope"}) == []


def test_cookies_are_never_kept(client: FhirClient) -> None:
    with responses.RequestsMock() as mock:
        mock.get(
            f"{BASE}/Patient/a",
            json={"resourceType": "Patient"},
            headers={"Set-Cookie": "session=abc; Path=/"},
        )
        mock.get(f"{BASE}/Patient/b", json={"resourceType": "Patient"})
        client.fetch(BASE, "Patient/a", TOKEN)
        client.fetch(BASE, "Patient/b", TOKEN)
        assert "Cookie" not in mock.calls[1].request.headers


# --- properties --------------------------------------------------------------


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)
paths = st.lists(st.from_regex(r"[A-Za-z0-9_.~-]{1,12}", fullmatch=True), max_size=4)


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=hosts,
    port=st.none() | st.integers(1, 65535),
    segments=paths,
    slash=st.booleans(),
)
def test_normalise_base_is_idempotent_and_allowlist_exact(
    scheme: str, host: str, port: int | None, segments: list[str], slash: bool
) -> None:
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}/{'/'.join(segments)}"
    url += "/" if slash else ""
    once = normalise_base(url)
    assert normalise_base(once) == once
    allow = Allowlist([url])
    assert allow.allows(url)
    assert allow.allows(once)
    assert not allow.allows(f"{once}/x")
    assert not allow.allows(once.replace(f"://{host}", f"://{host}.evil.test", 1))
    assert same_base(f"{once}/Condition?patient=1", url)
