"""Markdown pieces every protocol's section of results.md is written with."""


def pct(x: float) -> str:
  return f"{100 * x:.2f}"


def interval(iv: dict) -> str:
  """A paired difference and its 95% interval, in points."""
  return f"{100 * iv['diff']:+.1f} [{100 * iv['lo']:+.1f}, {100 * iv['hi']:+.1f}]"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
  return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
          + ["| " + " | ".join(r) + " |" for r in rows])
