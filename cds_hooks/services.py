"""The service registry: id, hook, prefetch templates and the evaluation behind each.

A :class:`CdsService` is a plain value. The guideline module builds the
registry from the content file; ``plugin`` only looks services up, lists them
for discovery and calls :meth:`CdsService.evaluate` with resolved FHIR data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cds_hooks.errors import InvalidRequest, UnknownService
from cds_hooks.models import Card, HookRequest, ServiceDescriptor

# Resolved prefetch: key -> list of raw FHIR resources (dicts). An empty list means
# "known to be empty"; a key that failed is absent and named in ``failed``.
Resources = Mapping[str, list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class PrefetchData:
    """FHIR data for one call, whatever its origin (prefetch or fetch)."""

    resources: Resources
    failed: frozenset[str] = frozenset()

    def get(self, key: str) -> list[dict[str, Any]] | None:
        """The resources under ``key``; ``None`` when unknown (failed or never asked)."""
        if key in self.failed:
            return None
        return self.resources.get(key)


class IssuedCard(ABC):
    """A card to show and the finding (kebab-case key) it answers.

    What suppression and the card cap read (the finding, the findings merged into it, its
    kind, the override reasons it offers, its uuid) is known without the card itself, so a
    card that is suppressed, folded into another or cut need never be made: :attr:`card` and
    :meth:`wire` make it. :class:`StaticCard` is a card given whole; the guideline's cards are
    rendered from their content only when shown (``cds_hooks.cards.RenderedCard``).
    """

    __slots__ = ()

    finding: str
    # Findings folded into this card besides its own (related advice merged, not repeated).
    merged: tuple[str, ...]

    @property
    @abstractmethod
    def card(self) -> Card:
        """The card itself (made when first asked for, where it is rendered)."""

    @property
    def uuid(self) -> str | None:
        """The uuid the card will carry (feedback names a card by it)."""
        return self.card.uuid

    @property
    def kind(self) -> str:
        """The card's kind: its ``source.topic`` code, else its finding."""
        topic = self.card.source.topic
        return topic.code if topic and topic.code else self.finding

    @property
    def reasons(self) -> tuple[str, ...]:
        """The override reason codes the card offers (feedback may use only these)."""
        return tuple(reason.code for reason in self.card.overrideReasons or [] if reason.code)

    def with_uuid(self, uuid: str) -> IssuedCard:
        """The same card with another uuid."""
        return StaticCard(self.card.model_copy(update={"uuid": uuid}), self.finding, self.merged)

    def wire(self) -> dict[str, Any]:
        """The card as it goes on the wire: what ``card.wire()`` gives."""
        return self.card.wire()


@dataclass(frozen=True, slots=True)
class StaticCard(IssuedCard):
    """A card given whole, and the finding it was made for."""

    # A field where the base has a property: field() so that the property is not its default.
    card: Card = field()
    finding: str
    merged: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Fitted:
    """The cards kept under the card cap, and the findings the cap still cut."""

    issued: list[IssuedCard]
    cut: tuple[str, ...] = ()


# Fits the cards left after suppression (most urgent first) under the cap (None: no cap).
Fitter = Callable[[Sequence[IssuedCard], int | None], Fitted]


def cut_to(items: Sequence[IssuedCard], limit: int | None) -> Fitted:
    """The plain cap: the first ``limit`` cards; every finding of the others is cut."""
    kept = list(items) if limit is None else list(items[: max(limit, 0)])
    cut = tuple(f for item in items[len(kept) :] for f in (item.finding, *item.merged))
    return Fitted(kept, cut)


@dataclass(frozen=True, slots=True)
class Evaluation:
    issued: list[IssuedCard] = field(default_factory=list)
    # The patient's m-kopper status in this call ("suspected", "confirmed"; None when unknown).
    # Feedback suppression keeps it, so a status change brings suppressed cards back at once.
    status: str | None = None
    # Resources the reading left out as malformed, and resources that failed strict R4
    # validation but were read leniently because they name m-kopper (counts only: no data).
    skipped: int = 0
    read_leniently: int = 0

    @property
    def cards(self) -> list[Card]:
        return [item.card for item in self.issued]


Evaluator = Callable[[HookRequest, PrefetchData], Evaluation]


@dataclass(frozen=True, slots=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]
    evaluate: Evaluator
    # Prefetch keys without which no answer can be given (412 when unavailable).
    required_prefetch: frozenset[str] = frozenset()
    # Context keys the hook must carry (checked before any data is fetched).
    required_context: tuple[str, ...] = ("patientId",)
    usage_requirements: str | None = None
    # How the cards of one call are fitted under the card cap after suppression.
    fit: Fitter = cut_to
    # Which prefetched Conditions the evaluation reads, by the JSON text of their ``code``
    # (``null`` when absent; None: every one). A large request body is parsed without the
    # others (``plugin.api.skim``).
    reads_condition: Callable[[bytes], bool] | None = None

    def descriptor(self) -> ServiceDescriptor:
        return ServiceDescriptor(
            hook=self.hook,
            title=self.title,
            description=self.description,
            id=self.id,
            prefetch=dict(self.prefetch) or None,
            usageRequirements=self.usage_requirements,
        )

    def check_request(self, request: HookRequest) -> None:
        """Refuse a request this service cannot answer, naming the field (never its value)."""
        if request.hook != self.hook:
            raise InvalidRequest(
                f"This service answers the '{self.hook}' hook.",
                details=[{"path": "hook", "problem": f"must be '{self.hook}'"}],
            )
        missing = [key for key in self.required_context if not request.context.get(key)]
        if missing:
            raise InvalidRequest(
                "The hook context is incomplete.",
                details=[{"path": f"context.{key}", "problem": "required"} for key in missing],
            )
        # Ids in the context (patientId, encounterId, userId ...) are strings in every hook.
        wrong = [
            key
            for key, value in request.context.items()
            if key.endswith("Id") and value is not None and not isinstance(value, str)
        ]
        if wrong:
            raise InvalidRequest(
                "The hook context is not valid.",
                details=[
                    {"path": f"context.{key}", "problem": "must be a string"} for key in wrong
                ],
            )


class ServiceRegistry:
    def __init__(self, services: Iterable[CdsService]):
        self._services: dict[str, CdsService] = {}
        for service in services:
            if service.id in self._services:
                raise ValueError(f"duplicate service id {service.id!r}")
            self._services[service.id] = service

    def __iter__(self) -> Any:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

    def get(self, service_id: str) -> CdsService:
        try:
            return self._services[service_id]
        except KeyError:
            raise UnknownService() from None

    def descriptors(self) -> list[ServiceDescriptor]:
        return [service.descriptor() for service in self._services.values()]
