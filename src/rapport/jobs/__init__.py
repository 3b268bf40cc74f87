"""Scheduled jobs: one scheduler for every periodic batch (tags, segments, the lifecycle, and
whatever registers a provider). Entry points: ``runner.run_due`` and ``runner.run_now``."""
