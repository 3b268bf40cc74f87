"""Automated journeys: entry trigger, steps (wait, branch, split, send, tag, lead, webhook,
exit) and goal, run per person on the stream engine (docs/journeys.md)."""
