"""Figures one callback measures and another reports, passed through the LightningModule.

The memory and throughput callbacks publish their latest figures on the module's public
``run_figures`` attribute (``{"memory": {...}, "speed": {...}}``); the run summary reads them
there. So no callback looks for another one by class or reads its insides, and a replaced
throughput callback only has to publish the same names.

>>> class Module: pass
>>> module = Module()
>>> publish(module, "speed", {"tokens_per_second": 85.0})
>>> published(module, "speed")
{'tokens_per_second': 85.0}
"""


def publish(pl_module, group: str, figures: dict[str, float]) -> None:
    board = getattr(pl_module, "run_figures", None)
    if board is None:
        board = {}
        pl_module.run_figures = board
    board.setdefault(group, {}).update(figures)


def published(pl_module, group: str) -> dict[str, float]:
    """A copy of a group's figures; empty when no callback published them (e.g. it was left out)."""
    return dict((getattr(pl_module, "run_figures", None) or {}).get(group, {}))
