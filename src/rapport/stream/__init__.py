"""The stream path (DESIGN.md): the log's records become warehouse rows with a person
(stage 1, ``follow``), then rules are judged per event (stage 2): ``core`` is the rule core,
``engine`` its embedded driver over the warehouse, ``worker`` its scaled-out driver over NATS
JetStream partitions that ``partitions`` publishes.
"""
