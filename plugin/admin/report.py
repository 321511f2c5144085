"""What the infection-control dashboard shows: cards shown, accepted, overridden, per kind and day.

Counts only. Cards shown come from the daily counts (``issued_counts``, written
behind by each worker within seconds: ``plugin.storage.issued``); outcomes from the
feedback rows, by the card kind each carries (source.topic code). The report reads
override reason codes known to the content file; it never reads a user comment, a
card's patient or anything else that could name a patient.
A reason code the content does not know is counted as ``other``: the EHR sends
it, so it could carry anything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin.storage.schema import feedback, issued_counts, suppressions

EVENTS: tuple[str, ...] = ("shown", "accepted", "overridden")
UNKNOWN_KIND = "(unknown card)"
OTHER_REASON = "other"
MAX_DAYS = 366


@dataclass(slots=True)
class KindReport:
    kind: str
    label: str
    # event -> day -> count
    daily: dict[str, dict[date, int]] = field(
        default_factory=lambda: {event: defaultdict(int) for event in EVENTS}
    )
    # reason code -> count
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # reason code -> day -> count (for the CSV)
    reasons_daily: dict[str, dict[date, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    suppressed_now: int = 0

    def total(self, event: str) -> int:
        return sum(self.daily[event].values())

    @property
    def override_rate(self) -> float | None:
        answered = self.total("accepted") + self.total("overridden")
        return self.total("overridden") / answered if answered else None


@dataclass(frozen=True, slots=True)
class Report:
    first_day: date
    last_day: date
    kinds: list[KindReport]
    reason_labels: Mapping[str, str]

    @property
    def days(self) -> list[date]:
        count = (self.last_day - self.first_day).days + 1
        return [self.first_day + timedelta(days=n) for n in range(count)]

    def daily_total(self, event: str) -> dict[date, int]:
        totals: dict[date, int] = defaultdict(int)
        for kind in self.kinds:
            for day, count in kind.daily[event].items():
                totals[day] += count
        return totals

    def reason_totals(self) -> list[tuple[str, int]]:
        totals: dict[str, int] = defaultdict(int)
        for kind in self.kinds:
            for code, count in kind.reasons.items():
                totals[code] += count
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))

    def csv_rows(self) -> list[tuple[str, str, str, str, int]]:
        """(date, card kind, event, override reason, count), one row per non-zero count."""
        rows: list[tuple[str, str, str, str, int]] = []
        for kind in self.kinds:
            for event in ("shown", "accepted"):  # overrides are written per reason below
                for day, count in sorted(kind.daily[event].items()):
                    rows.append((day.isoformat(), kind.kind, event, "", count))
            for code, days in sorted(kind.reasons_daily.items()):
                for day, count in sorted(days.items()):
                    rows.append((day.isoformat(), kind.kind, "overridden", code, count))
        rows.sort(key=lambda row: (row[0], row[1], row[2], row[3]))
        return rows


def _as_date(value: Any) -> date:
    # SQLite's date() gives text, PostgreSQL's a date.
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _utc_date(engine: Engine, column: Any) -> Any:
    # Days are UTC, as the issued-card counts are; PostgreSQL's date() would use the session's
    # time zone. SQLite keeps the UTC time as written.
    if engine.dialect.name == "postgresql":
        return sa.func.date(sa.func.timezone("UTC", column))
    return sa.func.date(column)


def build_report(
    engine: Engine,
    *,
    now: datetime,
    days: int,
    kind_labels: Mapping[str, str],
    reason_labels: Mapping[str, str],
) -> Report:
    days = max(1, min(days, MAX_DAYS))
    last_day = now.date()
    first_day = last_day - timedelta(days=days - 1)
    since = datetime.combine(first_day, datetime.min.time(), tzinfo=now.tzinfo)
    kinds: dict[str, KindReport] = {}

    def kind_report(kind: str | None) -> KindReport:
        key = kind or UNKNOWN_KIND
        if key not in kinds:
            kinds[key] = KindReport(kind=key, label=kind_labels.get(key, key))
        return kinds[key]

    feedback_day = _utc_date(engine, feedback.c.received_at)
    feedback_kind = sa.func.coalesce(feedback.c.kind, feedback.c.finding)
    with engine.connect() as conn:
        shown = conn.execute(
            sa.select(issued_counts.c.day, issued_counts.c.kind, sa.func.sum(issued_counts.c.count))
            .where(issued_counts.c.day >= first_day)
            .group_by(issued_counts.c.day, issued_counts.c.kind)
        ).all()
        outcomes = conn.execute(
            sa.select(feedback_day, feedback_kind, feedback.c.outcome, feedback.c.override_code)
            .add_columns(sa.func.count())
            .where(feedback.c.received_at >= since)
            .group_by(feedback_day, feedback_kind, feedback.c.outcome, feedback.c.override_code)
        ).all()
        active = conn.execute(
            sa.select(suppressions.c.kind, sa.func.count())
            .where(suppressions.c.expires_at > now)
            .group_by(suppressions.c.kind)
        ).all()

    for day, kind, count in shown:
        kind_report(kind).daily["shown"][_as_date(day)] += int(count)
    for day, kind, outcome, code, count in outcomes:
        if outcome not in EVENTS:
            continue
        report = kind_report(kind)
        when = _as_date(day)
        report.daily[outcome][when] += int(count)
        if outcome == "overridden":
            reason = code if code in reason_labels else OTHER_REASON
            report.reasons[reason] += int(count)
            report.reasons_daily[reason][when] += int(count)
    for kind, count in active:
        kind_report(kind).suppressed_now = int(count)

    ordered = sorted(kinds.values(), key=lambda k: (-k.total("shown"), k.kind))
    return Report(first_day, last_day, ordered, reason_labels)


# --- Chart geometry (the template draws it as SVG) -------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    peak: int
    x_labels: list[tuple[float, str]]
    plot_top: float
    plot_bottom: float
    plot_left: float


def daily_chart(
    report: Report, series: Mapping[str, Mapping[date, int]], *, width: int, height: int
) -> Chart:
    """Grouped bars per day, one per event (shown, accepted, overridden)."""
    days = report.days
    left, right, top, bottom = 36.0, 8.0, 10.0, height - 22.0
    peak = max([1, *(count for values in series.values() for count in values.values())])
    slot = (width - left - right) / len(days)
    bar_width = max(1.0, slot * 0.8 / len(series))
    bars: list[Bar] = []
    for index, day in enumerate(days):
        for number, (event, values) in enumerate(series.items()):
            count = values.get(day, 0)
            if not count:
                continue
            bar_height = (bottom - top) * count / peak
            bars.append(
                Bar(
                    x=round(left + index * slot + slot * 0.1 + number * bar_width, 2),
                    y=round(bottom - bar_height, 2),
                    width=round(bar_width, 2),
                    height=round(bar_height, 2),
                    css=event,
                    title=f"{day.isoformat()}: {count} {event}",
                )
            )
    step = max(1, len(days) // 6)
    labels = [
        (round(left + index * slot + slot / 2, 2), day.strftime("%d.%m"))
        for index, day in enumerate(days)
        if index % step == 0
    ]
    return Chart(width, height, bars, peak, labels, top, bottom, left)


def reasons_chart(
    totals: Sequence[tuple[str, int]], labels: Mapping[str, str], *, width: int
) -> Chart:
    """Horizontal bars: how often each override reason was given."""
    row = 26.0
    left, right = 250.0, 50.0
    height = int(row * max(1, len(totals)) + 10)
    peak = max([1, *(count for _, count in totals)])
    bars = [
        Bar(
            x=left,
            y=round(5 + index * row, 2),
            width=round(max(1.0, (width - left - right) * count / peak), 2),
            height=row - 8,
            css="overridden",
            title=f"{labels.get(code, code)}: {count}",
        )
        for index, (code, count) in enumerate(totals)
    ]
    return Chart(width, height, bars, peak, [], 5, height - 5, left)
