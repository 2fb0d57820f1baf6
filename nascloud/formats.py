"""Money, sizes, durations, moments and advice about them as a user sees them anywhere (tables, the live
view, events, errors): one format each."""

from __future__ import annotations

import math
import time
from typing import Optional

from nascloud.hints import command


def per_hour(usd: Optional[float]) -> str:
    """A price per hour to four significant digits: $0.2147/h, $36.00/h, $0/h."""
    return "-" if usd is None else f"${significant(usd)}/h"


def significant(number: float) -> str:
    """Four significant digits, never in exponent form (a price column under a "$/h" header)."""
    if number == 0:
        return "0"
    decimals = max(0, 3 - math.floor(math.log10(abs(number))))
    return f"{number:,.{decimals}f}"


def dollars(usd: Optional[float]) -> str:
    """An amount spent or budgeted, to the cent: $1,234.56."""
    return "-" if usd is None else f"${usd:,.2f}"


def data_size(n: float) -> str:
    """Bytes in decimal units: 812 B, 43.4 kB, 1.2 GB."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def duration(hours: Optional[float]) -> str:
    """A wall time: to the second under two minutes (40 s, never "0 min"), then to the minute (22 min,
    1 h 52 min), to the hour from two days (3 d 04 h)."""
    if hours is None:
        return "-"
    if hours * 3600 < 119.5:
        return f"{max(0, round(hours * 3600))} s"
    minutes = round(hours * 60)
    if minutes >= 48 * 60:
        return f"{round(hours) // 24} d {round(hours) % 24:02d} h"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def moment(t: Optional[float], now: Optional[float] = None) -> str:
    """A point in time in this machine's zone, named: 14:02:05 CET today, 2024-11-30 14:02:05 CET on
    another day (a search runs for days; a record outlives the year)."""
    if t is None:
        return "-"
    local = time.localtime(t)
    today = time.localtime(time.time() if now is None else now)[:3] == local[:3]
    return time.strftime("%H:%M:%S %Z" if today else "%Y-%m-%d %H:%M:%S %Z", local)


def trial_number(trial_id) -> str:
    """The trial as every screen numbers it: 1 for the first (KerasTuner's ids count from 00)."""
    text = str(trial_id)
    return str(int(text) + 1) if text.isdigit() else text


SMALL_DATA_SAMPLES = 5000  # the seed article: searches on fewer training samples lost to a hand-made baseline


def small_data_warning(samples: int, what: str) -> Optional[str]:
    """Advice, not a refusal (launch, on the packed data; estimate, on the samples stated)."""
    if samples >= SMALL_DATA_SAMPLES:
        return None
    return (f"{what} {samples:,} samples, under {SMALL_DATA_SAMPLES:,}: the seed article found that searches on "
            f"under {SMALL_DATA_SAMPLES:,} samples lost to a hand-made baseline; compare the search with the "
            f"baseline {command('results', 'JOB')} reports")
