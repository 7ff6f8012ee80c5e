"""Evaluation: win-rates with standard errors, and the run report (markdown + HTML + plots).

Importing this package loads numpy only; matplotlib and rich are imported inside the
functions that draw or build tables.
"""

from .report import (
    display_name,
    format_table,
    rich_table,
    verdicts,
    write_report,
)
from .winrate import (
    build_winrates,
    load_samples,
    paired_difference,
    paired_outcomes,
    read_samples,
    summarise_method,
    win_rate,
)

__all__ = [
    "build_winrates",
    "display_name",
    "format_table",
    "load_samples",
    "paired_difference",
    "paired_outcomes",
    "read_samples",
    "rich_table",
    "summarise_method",
    "verdicts",
    "win_rate",
    "write_report",
]
