"""The strategy ladder: which method each category's data allows, and the models fitted for it.

- :mod:`adray.strategy.rules`: the ladder's thresholds as data (``StrategyRules``, ``--rules FILE.json``);
- :mod:`adray.strategy.inventory`: counts per category from a manifest and the latest labels;
- :mod:`adray.strategy.plan`: the pure plan over an inventory (``adray plan``);
- :mod:`adray.strategy.registry`: the model registry under a results root (``adray models``, the
  ``models`` view of ``adray query``).

Plain Python and DuckDB; nothing here imports Ray.
"""
