"""The laboratory lookback window in the running service: the app's one clock decides it.

``create_app(clock=...)`` hands its clock to the registry, so the window of
``laboratory_lookback_days`` (content file) is counted from the same time that storage and
suppression read. The same request gives cards while the positive result is inside the window
and none once the clock has moved past it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask.testing import FlaskClient

from tests.support.clock import Clock
from tests.support.golden import NOW, Case, iter_cases, normalise

CASES = {case.id: case for case in iter_cases()}
INSIDE = CASES["mkopper-patient-view/lab-positive-41-days-inside-window"]
CONDITION_ONLY = CASES["mkopper-patient-view/suspected-snomed-inpatient"]


def post(client: FlaskClient, case: Case) -> dict[str, Any]:
    response = client.post(f"/cds-services/{case.service_id}", json=case.request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return normalise(body)


def test_the_same_request_gives_no_cards_once_the_clock_passes_the_window(make_app: Any) -> None:
    clock = Clock(NOW)
    client = make_app(CDS_CLOCK=clock).test_client()
    assert post(client, INSIDE) == INSIDE.expected
    assert INSIDE.expected["cards"]  # a confirmed case: notification and precautions

    clock.now += timedelta(days=1, seconds=1)  # the result is now 42 days and a second old
    assert post(client, INSIDE) == {"cards": []}

    clock.now -= timedelta(seconds=2)  # 41 days, 23:59:59: inside again
    assert post(client, INSIDE) == INSIDE.expected


def test_the_window_holds_only_for_laboratory_results(make_app: Any) -> None:
    # A recorded suspected Condition is not evidence that ages out: a year on, still a case.
    clock = Clock(NOW)
    client = make_app(CDS_CLOCK=clock).test_client()
    assert post(client, CONDITION_ONLY) == CONDITION_ONLY.expected
    clock.now += timedelta(days=365)
    assert post(client, CONDITION_ONLY) == CONDITION_ONLY.expected
    assert CONDITION_ONLY.expected["cards"]


def test_storage_suppression_and_the_services_read_one_clock(make_app: Any) -> None:
    clock = Clock(NOW)
    app = make_app(CDS_CLOCK=clock)
    assert app.extensions["cds_store"].clock is clock
    for service in app.extensions["cds_registry"]:
        assert service.evaluate.clock is clock, service.id


def test_without_a_clock_of_its_own_a_test_app_stands_at_the_test_clock(make_app: Any) -> None:
    client = make_app().test_client()
    assert post(client, INSIDE) == INSIDE.expected
    assert make_app().extensions["cds_store"].clock() == NOW
