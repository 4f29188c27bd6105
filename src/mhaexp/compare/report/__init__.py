"""Tables and plots of a :class:`~mhaexp.compare.runs.RunSet`: terminal text, Markdown or HTML, PNGs.

``aggregation`` turns the runs table into one row per configuration and names them, ``tables`` formats
those rows, ``plots`` draws the PNGs and ``writer`` puts them together into what the CLI prints and the report.
"""

from mhaexp.compare.report.writer import Report, terminal_summary, write_report

__all__ = ["Report", "terminal_summary", "write_report"]
