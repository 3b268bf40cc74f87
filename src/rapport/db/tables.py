"""Every table of the metadata DB. Migrations in ``migrations/`` must match these (a test checks).

The event log and the warehouse are separate stores (``rapport.log``, ``rapport.warehouse``).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# -- people who use the console and the API -------------------------------------------------
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(20), nullable=False),  # admin | marketer | sales | viewer
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 hex of the token
    Column("role", String(20), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True)),
    #: comma list of ingest | read | write | admin: what the token may do within its role
    Column("scopes", String(100), nullable=False, default="read,write"),
    Column("expires_at", DateTime(timezone=True)),
    #: set at revocation, or at rotation to the end of the grace period (may be in the future)
    Column("revoked_at", DateTime(timezone=True)),
    #: the token this one replaced (``rapport token rotate``)
    Column("rotated_from", Integer, ForeignKey("api_tokens.id", ondelete="SET NULL")),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(100), nullable=False),
    Column("action", String(100), nullable=False),
    Column("target", String(200)),
    Column("detail", JSON),
)

# -- sources: where data comes from ---------------------------------------------------------
sources = Table(
    "sources",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("kind", String(20), nullable=False),  # client | server | file | sql
    Column("description", Text),
    Column("write_key", String(64), nullable=False, unique=True),
    #: server-side sources authenticate with this secret and may send only ``allowed_events``
    Column("secret_key", String(64), unique=True),
    Column("allowed_events", JSON),
    Column("validation_mode", String(10), nullable=False, default="lenient"),  # strict|lenient
    Column("priority", Integer, nullable=False, default=100),  # for survivorship later
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# -- the tracking plan ----------------------------------------------------------------------
event_types = Table(
    "event_types",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("kind", String(10), nullable=False, default="user"),  # user | system
    Column("description", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    #: bumped on every write; (count, max(updated_at)) is the plan's cheap version stamp
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

properties = Table(
    "properties",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scope", String(10), nullable=False),  # event | user | item
    #: for scope=event: the event type it belongs to; NULL = common to every event
    Column("event_type_id", Integer, ForeignKey("event_types.id", ondelete="CASCADE")),
    #: for scope=item: the item type (product, order, hotel, ...)
    Column("item_type", String(50)),
    Column("name", String(100), nullable=False),
    Column("data_type", String(10), nullable=False),  # string|integer|number|boolean|datetime
    Column("description", Text, nullable=False, default=""),
    Column("required", Boolean, nullable=False, default=False),
    Column("allowed_values", JSON),
    Column("min_value", Float),
    Column("max_value", Float),
    Column("pii", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("scope", "event_type_id", "item_type", "name", name="uq_properties_key"),
)

# -- quarantine: every rejected record, with its reason, replayable -------------------------
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String(100), index=True),
    Column("kind", String(10), nullable=False),  # event | row
    Column("event", String(100), index=True),
    Column("reason", String(40), nullable=False, index=True),  # violation type or error class
    Column("detail", Text, nullable=False),
    #: list of {"type", "path", "message"}
    Column("violations", JSON),
    Column("payload", Text, nullable=False),  # the raw record as received (JSON text)
    Column("import_run_id", Integer, ForeignKey("import_runs.id", ondelete="SET NULL")),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("status", String(12), nullable=False, default="open"),  # open|replayed|discarded
    Column("replayed_at", DateTime(timezone=True)),
)

#: violations of lenient sources: the event was accepted, the violation recorded
violations = Table(
    "violations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String(100), nullable=False, index=True),
    Column("event", String(100), index=True),
    Column("message_id", String(100)),
    Column("type", String(30), nullable=False),
    Column("path", String(200), nullable=False),
    Column("message", Text, nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False, index=True),
)

# -- batch imports --------------------------------------------------------------------------
imports = Table(
    "imports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("source", String(100), nullable=False),
    Column("uri", Text, nullable=False),  # file path or SQLAlchemy URL
    Column("query", Text),  # table name or SQL query for SQL sources
    Column("mapping", JSON, nullable=False),
    Column("watermark_column", String(100)),
    Column("last_watermark", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

import_runs = Table(
    "import_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("import_id", Integer, ForeignKey("imports.id", ondelete="SET NULL")),
    Column("source", String(100), nullable=False, index=True),
    Column("uri", Text, nullable=False),
    Column("status", String(12), nullable=False),  # running | done | failed
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("rows_read", Integer, nullable=False, default=0),
    Column("rows_loaded", Integer, nullable=False, default=0),
    Column("rows_duplicate", Integer, nullable=False, default=0),
    Column("rows_quarantined", Integer, nullable=False, default=0),
    Column("watermark", String(100)),
    Column("error", Text),
    #: per-field data-quality report: {field: {fill_rate, invalid, duplicates, ...}}
    Column("quality", JSON),
)

# -- identity resolution (OneID): configuration and the review queue ------------------------
#: The graph itself (nodes, the append-only link log, history) lives in the warehouse, where a
#: full rebuild reads it column-wise; these are the small, edited-by-people parts.
identifier_types = Table(
    "identifier_types",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("priority", Integer, nullable=False),  # higher wins when limits force a choice
    Column("max_per_person", Integer),  # NULL = no limit
    Column("merge", Boolean, nullable=False, default=True),  # False: identifies, never merges
    Column("normaliser", String(20), nullable=False, default="trim"),  # mobile|email|id_card|...
    Column("pattern", String(200)),  # regex the normalised value must match
    #: where events carry it: ["userId", "anonymousId", "traits.mobile", "context.device.id"]
    Column("paths", JSON, nullable=False),
    Column("scope_path", String(100)),  # e.g. context.app.id: a WeChat openid is per app
    #: a value seen with more than this many persons (told apart by stronger identifiers) is a
    #: shared one (a household tablet, a clerk's test number) and gets blocked automatically
    Column("shared_after", Integer),
    Column("description", Text, nullable=False, default=""),
    Column("builtin", Boolean, nullable=False, default=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

identity_blocklist = Table(
    "identity_blocklist",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("id_type", String(50)),  # NULL = every type
    Column("value", String(200)),  # an exact normalised value ...
    Column("pattern", String(200)),  # ... or a regex over the normalised value
    Column("reason", Text, nullable=False),
    Column("auto", Boolean, nullable=False, default=False),  # found by degree, not typed in
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(100), nullable=False),
)

survivorship_rules = Table(
    "survivorship_rules",
    metadata,
    Column("property", String(100), primary_key=True),
    #: source_priority | most_recent | most_frequent | first_non_empty | sum | union
    Column("rule", String(20), nullable=False),
    Column("sources", JSON),  # for source_priority: source names, best first
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: probabilistic matches between the two thresholds, waiting for a person to decide
match_candidates = Table(
    "match_candidates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("person_a", Integer, nullable=False, index=True),
    Column("person_b", Integer, nullable=False, index=True),
    Column("probability", Float, nullable=False),
    Column("evidence", JSON, nullable=False),  # compared fields and their agreement levels
    Column("status", String(10), nullable=False, default="pending"),  # pending|accepted|rejected
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", String(100)),
    Column("decided_at", DateTime(timezone=True)),
    UniqueConstraint("person_a", "person_b", name="uq_match_candidates_pair"),
)


# -- tags, segments, audiences (issue 4) -----------------------------------------------------
tags = Table(
    "tags",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("kind", String(12), nullable=False),  # attribute | statistical | rule | mined
    Column("description", Text, nullable=False, default=""),
    Column("owner", String(100), nullable=False, default=""),
    Column("value_type", String(10), nullable=False, default="string"),  # string|number|...
    Column("multi", Boolean, nullable=False, default=False),  # several values per person
    Column("schedule", String(50)),  # refresh schedule: "daily", "hourly", cron text, or NULL
    #: kind-specific definition: rule -> {"condition": {...}, "value": ...}; attribute ->
    #: {"field", "bands"}; statistical -> {"event", "agg", "property", "window_days"}; mined ->
    #: {"model": "rfm" | "kmeans" | "churn" | "category_preference", ...}
    Column("definition", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

tag_runs = Table(
    "tag_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tag_id", Integer, ForeignKey("tags.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(12), nullable=False),  # running | done | failed
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("persons", Integer),  # persons with a value
    Column("distribution", JSON),  # {value: persons}, top values
    Column("detail", JSON),  # e.g. a model's AUC, cluster profiles
    Column("error", Text),
)

segments = Table(
    "segments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    #: audience (one condition) | segmentation (buckets: [{"name", "condition"}]) | lifecycle
    Column("kind", String(12), nullable=False),
    Column("mode", String(8), nullable=False, default="dynamic"),  # dynamic | static
    Column("description", Text, nullable=False, default=""),
    Column("definition", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("refreshed_at", DateTime(timezone=True)),
    Column("size", Integer),
)


# -- delivery (rapport.delivery) ----------------------------------------------------------------
from sqlalchemy import Index  # noqa: E402 - kept inside this package's section

#: where messages go: a webhook, an SMTP server, a provider's HTTP API or a call list
channels = Table(
    "channels",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    #: webhook | email | sms | push | wechat_mp | wecom | call_list
    Column("kind", String(12), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("config", JSON, nullable=False),  # kind-specific: url, headers, templates, smtp ...
    Column("secret", Text),  # HMAC key / SMTP password / provider token; never shown in clear
    Column("rate_per_second", Float),  # token bucket; NULL = unlimited
    Column("burst", Integer),
    Column("allow_private", Boolean, nullable=False, default=False),  # set by an admin only
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: the transactional outbox: written in the transaction that creates the lead or message
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(200), nullable=False, unique=True),  # idempotency key
    Column("channel", String(100), nullable=False, index=True),
    Column("person_key", Integer, index=True),
    Column("origin", String(100), nullable=False, default=""),  # e.g. "lead:42", "campaign:7"
    Column("payload", JSON, nullable=False),
    #: pending | sending | failed (will retry) | delivered | dead | listed (in a call list)
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),  # since queued_at
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True)),
    Column("lease_owner", String(64)),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False),  # enqueue or last replay
    Column("delivered_at", DateTime(timezone=True)),
    Index("ix_outbox_status_due", "status", "next_attempt_at"),
    #: a campaign's report reads its rows by origin; counts by status from the index alone
    Index("ix_outbox_origin_status", "origin", "status"),
)

#: one row per try (and per replay), for the delivery log
delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "message_id",
        Integer,
        ForeignKey("outbox.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("attempt", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    #: delivered | retry | dead | exported | replayed
    Column("outcome", String(10), nullable=False),
    Column("http_status", Integer),
    Column("ms", Float),
    Column("error", Text),
    Column("response", Text),  # the first 500 characters of the answer
)


# -- leads (rapport.leads) ----------------------------------------------------------------------
from sqlalchemy import BigInteger, Index  # noqa: E402  (kept in this section: parallel edits)

#: a lead rule's current definition; every change to a live rule's logic adds a version row
lead_rules = Table(
    "lead_rules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("lead_type", String(200), nullable=False, index=True),
    Column("description", Text, nullable=False, default=""),
    Column("status", String(8), nullable=False, default="draft"),  # draft | live | paused
    Column("version", Integer, nullable=False, default=1),
    #: {"trigger", "conditions", "suppression", "cooldown"}: condition JSON and a Duration
    Column("definition", JSON, nullable=False),
    Column("score", Integer, nullable=False, default=50),  # 0-100
    Column("priority", Integer, nullable=False, default=3),  # 1 (highest) - 5
    Column("route", String(100), nullable=False, default="auto"),  # a lead_routes name | auto
    Column("mode", String(8), nullable=False, default="realtime"),  # realtime | offline
    Column("schedule", String(100)),  # offline rules: cron text, "daily" or "hourly"
    Column("owner", String(100), nullable=False, default=""),
    Column("fired", Integer, nullable=False, default=0),  # leads created
    Column("suppressed", Integer, nullable=False, default=0),  # stopped by the cooldown
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

lead_rule_versions = Table(
    "lead_rule_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("rule_id", Integer, ForeignKey("lead_rules.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("definition", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(100), nullable=False, default=""),
    UniqueConstraint("rule_id", "version", name="uq_lead_rule_versions_rule_version"),
)

leads = Table(
    "leads",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("person_key", BigInteger, nullable=False),
    Column("lead_type", String(200), nullable=False, index=True),
    Column("rule_id", Integer, ForeignKey("lead_rules.id", ondelete="SET NULL")),
    Column("rule_version", Integer),
    Column("evidence", JSON, nullable=False),  # the matched events with their properties
    Column("score", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    #: new | assigned | contacted | converted | closed_lost | invalid
    Column("status", String(12), nullable=False, index=True),
    Column("owner", String(100), index=True),  # the agent's username
    Column("team", String(100), index=True),
    Column("channel", String(100)),
    Column("route", String(100)),
    #: a replay (rule id + trigger event id) finds this and creates nothing
    Column("dedupe_key", String(200), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("assigned_at", DateTime(timezone=True)),
    Column("due_by", DateTime(timezone=True)),
    Index("ix_leads_cooldown", "person_key", "lead_type", "created_at"),
)

lead_history = Table(
    "lead_history",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("lead_id", Integer, ForeignKey("leads.id", ondelete="CASCADE"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(20), nullable=False),  # created | routed | assigned | status | ...
    Column("from_status", String(12)),
    Column("to_status", String(12)),
    Column("note", Text),
    #: an outcome reported by an external system: reporting it again changes nothing
    Column("external_id", String(200)),
    Index("ix_lead_history_lead_id", "lead_id"),
    UniqueConstraint("lead_id", "external_id", name="uq_lead_history_lead_external"),
)

lead_notes = Table(
    "lead_notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("lead_id", Integer, ForeignKey("leads.id", ondelete="CASCADE"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("author", String(100), nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_lead_notes_lead_id", "lead_id"),
)

#: sales teams: agents, how leads are shared among them and when the team works
lead_teams = Table(
    "lead_teams",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("strategy", String(12), nullable=False, default="round_robin"),  # | least_load
    Column("timezone", String(50), nullable=False, default="UTC"),
    Column("days", JSON, nullable=False),  # ISO weekdays it works: [1, 2, 3, 4, 5]
    Column("opens", String(5), nullable=False, default="09:00"),
    Column("closes", String(5), nullable=False, default="18:00"),
    Column("last_agent", String(100)),  # round-robin: who got the previous lead
    Column("created_at", DateTime(timezone=True), nullable=False),
)

lead_team_agents = Table(
    "lead_team_agents",
    metadata,
    Column("team_id", Integer, ForeignKey("lead_teams.id", ondelete="CASCADE"), primary_key=True),
    Column("username", String(100), primary_key=True),
    Column("position", Integer, nullable=False, default=0),
)

#: ordered routes: the first whose lead type (and person condition) matches takes the lead
lead_routes = Table(
    "lead_routes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("position", Integer, nullable=False, default=0),
    Column("lead_type", String(200)),  # NULL: any type
    Column("condition", JSON),  # optional condition on the person
    Column("target_kind", String(8), nullable=False),  # channel | team
    Column("target", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


# -- scheduled jobs (rapport.jobs) --------------------------------------------------------------
#: one row per job ever seen: when it was first seen (a new job's first slot comes after it),
#: when it last started, and the lease that keeps two processes from running it at once
jobs = Table(
    "jobs",
    metadata,
    Column("key", String(200), primary_key=True),  # tag:<name> | segment:<name> | lifecycle
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("last_started_at", DateTime(timezone=True)),
    Column("lease_owner", String(100)),  # host:pid:thread of the runner holding it
    Column("lease_until", DateTime(timezone=True)),  # renewed while the job runs
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(200), nullable=False, index=True),
    Column("trigger", String(10), nullable=False),  # schedule | manual
    Column("started_at", DateTime(timezone=True), nullable=False, index=True),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(8), nullable=False),  # running | ok | failed
    Column("result", JSON),  # the job's small report
    Column("error", Text),
)


#: what a person said about being contacted on a channel ("*": every channel); no row:
#: subscribed. The delivery guards suppress messages to an unsubscribed person.
consents = Table(
    "consents",
    metadata,
    Column("person_key", Integer, primary_key=True),
    Column("channel", String(100), primary_key=True),
    Column("status", String(20), nullable=False),  # subscribed | unsubscribed
    Column("at", DateTime(timezone=True), nullable=False),
    Column("source", String(200), nullable=False, default=""),  # e.g. "link", "api:alice"
)

# -- personalization (issue 6) -------------------------------------------------------------------
#: a place in the customer's site or app (a banner, an activity page) showing each person the
#: content of the highest-priority active variant whose audience holds them, else the default
placements = Table(
    "placements",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("default_content", JSON, nullable=False),
    #: [{"name", "audience", "bucket", "content", "priority", "active"}], in the editor's order
    Column("variants", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# -- campaigns (issue 6) ---------------------------------------------------------------------------
#: a campaign: who (an audience or an uploaded list), what (a template per channel field), when
#: (now, at a time, recurring), and its state (draft → planned → awaiting_approval → approved
#: → sending → sent; cancelled)
campaigns = Table(
    "campaigns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("goal_event", String(200), nullable=False, default=""),
    Column("goal_days", Integer, nullable=False, default=7),
    Column("audience", String(100)),  # a segment name; NULL when person_keys is given
    Column("person_keys", JSON),  # an uploaded list of person keys
    Column("channel", String(100), nullable=False),
    Column("content", JSON, nullable=False),  # field -> template
    Column("schedule", String(200), nullable=False, default=""),  # "" | "at <iso>" | schedule
    Column("holdout_share", Float, nullable=False, default=0.1),
    Column("cost_per_message", Float, nullable=False, default=0.0),
    Column("budget", Float),
    Column("owner", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("planned_by", String(100)),
    Column("approved_by", String(100)),
    Column("summary", JSON),  # the plan's counts
    Column("progress", JSON),  # {"enqueued", "total", "occurrence"} of the current send
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: the plan, one row per audience member: ``send``, ``holdout`` or ``suppressed`` (and why)
campaign_recipients = Table(
    "campaign_recipients",
    metadata,
    Column(
        "campaign_id",
        Integer,
        ForeignKey("campaigns.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("person_key", Integer, primary_key=True),
    Column("role", String(10), nullable=False),  # send | holdout | suppressed
    Column("reason", String(200)),
)


# -- coupons and trackable links (issue 6) ---------------------------------------------------------

#: a coupon: codes uploaded as a ``pool`` or ``generated`` (prefix + random part) when issued
coupons = Table(
    "coupons",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="SET NULL")),
    Column("kind", String(10), nullable=False),  # pool | generated
    Column("prefix", String(40), nullable=False, default=""),
    Column("value", String(200), nullable=False, default=""),  # "10% off", shown to users
    Column("valid_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: one code; issued once per (coupon, campaign, person), redeemed by an order event
coupon_codes = Table(
    "coupon_codes",
    metadata,
    Column("code", String(100), primary_key=True),
    Column("coupon_id", Integer, ForeignKey("coupons.id", ondelete="CASCADE"), nullable=False),
    Column("campaign_id", Integer),
    Column("person_key", Integer),  # NULL: a pool code not issued yet
    Column("issued_at", DateTime(timezone=True)),
    Column("redeemed_at", DateTime(timezone=True)),
    Column("order_event_id", String(200)),
    UniqueConstraint("coupon_id", "campaign_id", "person_key"),
)

#: a target URL of a campaign's content; tokens name it (and the person) by id
links = Table(
    "links",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE")),
    Column("target", Text, nullable=False),
    UniqueConstraint("campaign_id", "target"),
)

#: a click on a link, a scan of its QR code, or a registration that came through it
link_clicks = Table(
    "link_clicks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, index=True),
    Column("person_key", Integer),
    Column("link_id", Integer, ForeignKey("links.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(10), nullable=False),  # click | scan | register
    Column("at", DateTime(timezone=True), nullable=False),
    Column("user_agent", String(300)),
)

# -- journeys (issue 6) ---------------------------------------------------------------------------
#: an automated journey: entry trigger, entry rule, goal and a small graph of steps (JSON)
journeys = Table(
    "journeys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("status", String(10), nullable=False),  # draft | live | paused
    Column("definition", JSON, nullable=False),  # entry, entry_rule, goal, nodes
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: where each person stands in a journey (kept after they finish: entry rules read it)
journey_positions = Table(
    "journey_positions",
    metadata,
    Column(
        "journey_id",
        Integer,
        ForeignKey("journeys.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("person_key", Integer, primary_key=True, index=True),
    Column("seq", Integer, nullable=False),  # how many times the person entered
    Column("node", String(100)),  # NULL once finished
    Column("since", DateTime(timezone=True), nullable=False),  # event time at the node
    Column("deadline", DateTime(timezone=True)),  # a wait's end (event time)
    Column("entered_at", DateTime(timezone=True), nullable=False),
    Column("status", String(10), nullable=False),  # active | done | goal | merged
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: what each person did in a journey, one row per step (``key`` makes a replay a no-op)
journey_log = Table(
    "journey_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "journey_id",
        Integer,
        ForeignKey("journeys.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("person_key", Integer, nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("node", String(100)),
    Column("action", String(20), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("detail", JSON),
    Column("key", String(200), nullable=False, unique=True),
)

# -- manual tag values (issue 6) -------------------------------------------------------------------
#: values of ``manual`` tags set by people (API, console) or journeys, per person; a tag run
#: copies them into the warehouse's ``tag_values`` (workers write here, never to DuckDB)
manual_tag_values = Table(
    "manual_tag_values",
    metadata,
    Column("tag_id", Integer, ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
    Column("person_key", Integer, primary_key=True),
    Column("value", String(200), nullable=False),
    Column("set_at", DateTime(timezone=True), nullable=False),
    Column("set_by", String(200), nullable=False, default=""),  # a user, "journey:<name>"
)

# -- security (issue 7) ----------------------------------------------------------------------------
