"""A small registry standing in for the guideline, for tests of the HTTP layer alone."""

from __future__ import annotations

from cds_hooks.models import Card, Coding, HookRequest, Source
from cds_hooks.services import (
    CdsService,
    Evaluation,
    PrefetchData,
    ServiceRegistry,
    StaticCard,
)


def _echo(request: HookRequest, data: PrefetchData) -> Evaluation:
    conditions = data.get("conditions") or []
    if request.context.get("explode"):
        raise RuntimeError(f"patient {request.context['patientId']} secret detail")
    return Evaluation(
        issued=[
            StaticCard(
                card=Card(
                    summary=f"{len(conditions)} conditions",
                    indicator="info",
                    source=Source(label="test", topic=Coding(code="test-topic")),
                ),
                finding="test-finding",
            )
        ]
    )


def fake_registry() -> ServiceRegistry:
    return ServiceRegistry(
        [
            CdsService(
                id="test-view",
                hook="patient-view",
                title="Test",
                description="Counts conditions.",
                prefetch={"conditions": "Condition?patient={{context.patientId}}"},
                evaluate=_echo,
                required_prefetch=frozenset({"conditions"}),
            )
        ]
    )
