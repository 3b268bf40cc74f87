"""The stream path (DESIGN.md): the log's records become warehouse rows with a person.

On one machine it is one loop (``follow``): load the new log records into the warehouse, then
resolve the identities of everything still waiting for a person (stage 1). Realtime rules
(stage 2) join here in a later release.
"""
