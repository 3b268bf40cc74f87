"""Tags: labels on persons (PRODUCT.md section 3). ``definitions`` (the ``tags`` rows),
``rollups`` (daily per-person aggregates), ``compute`` (attribute, statistical and rule tags),
``mined`` (models), and ``store`` (values, runs and per-person history, shared by all kinds)."""
