"""Reports: the result schema, price catalog, cost model, tables, plots and the HTML report.

``build_report`` is the entry point that ``delibench report``, ``demo`` and ``compare`` call; the
plotting module (matplotlib) is imported only when a figure is drawn.
"""

from __future__ import annotations

from delibench.reports.build import Report, build_report

__all__ = ["Report", "build_report"]
