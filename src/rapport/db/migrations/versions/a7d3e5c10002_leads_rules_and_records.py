"""leads rules and records

Lead rules and their versions, leads with history and notes, sales teams and routes
(``rapport.leads``). Hand-written from autogenerate's output: the leads tables only.

Revision ID: a7d3e5c10002
Revises: a7d3e5c10001
Create Date: 2026-11-25 14:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "a7d3e5c10002"
down_revision = "a7d3e5c10001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lead_routes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("lead_type", sa.String(length=200), nullable=True),
        sa.Column("condition", sa.JSON(), nullable=True),
        sa.Column("target_kind", sa.String(length=8), nullable=False),
        sa.Column("target", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lead_routes")),
        sa.UniqueConstraint("name", name=op.f("uq_lead_routes_name")),
    )
    op.create_table(
        "lead_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("lead_type", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(length=100), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("schedule", sa.String(length=100), nullable=True),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("fired", sa.Integer(), nullable=False),
        sa.Column("suppressed", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lead_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_lead_rules_name")),
    )
    with op.batch_alter_table("lead_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lead_rules_lead_type"), ["lead_type"], unique=False)

    op.create_table(
        "lead_teams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("strategy", sa.String(length=12), nullable=False),
        sa.Column("timezone", sa.String(length=50), nullable=False),
        sa.Column("days", sa.JSON(), nullable=False),
        sa.Column("opens", sa.String(length=5), nullable=False),
        sa.Column("closes", sa.String(length=5), nullable=False),
        sa.Column("last_agent", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lead_teams")),
        sa.UniqueConstraint("name", name=op.f("uq_lead_teams_name")),
    )
    op.create_table(
        "lead_rule_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["lead_rules.id"],
            name=op.f("fk_lead_rule_versions_rule_id_lead_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lead_rule_versions")),
        sa.UniqueConstraint("rule_id", "version", name="uq_lead_rule_versions_rule_version"),
    )
    op.create_table(
        "lead_team_agents",
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["lead_teams.id"],
            name=op.f("fk_lead_team_agents_team_id_lead_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("team_id", "username", name=op.f("pk_lead_team_agents")),
    )
    op.create_table(
        "leads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.BigInteger(), nullable=False),
        sa.Column("lead_type", sa.String(length=200), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("rule_version", sa.Integer(), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("team", sa.String(length=100), nullable=True),
        sa.Column("channel", sa.String(length=100), nullable=True),
        sa.Column("route", sa.String(length=100), nullable=True),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due_by", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["lead_rules.id"],
            name=op.f("fk_leads_rule_id_lead_rules"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leads")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_leads_dedupe_key")),
    )
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_leads_cooldown", ["person_key", "lead_type", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_leads_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_leads_lead_type"), ["lead_type"], unique=False)
        batch_op.create_index(batch_op.f("ix_leads_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_leads_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_leads_team"), ["team"], unique=False)

    op.create_table(
        "lead_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("from_status", sa.String(length=12), nullable=True),
        sa.Column("to_status", sa.String(length=12), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["lead_id"],
            ["leads.id"],
            name=op.f("fk_lead_history_lead_id_leads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lead_history")),
        sa.UniqueConstraint("lead_id", "external_id", name="uq_lead_history_lead_external"),
    )
    with op.batch_alter_table("lead_history", schema=None) as batch_op:
        batch_op.create_index("ix_lead_history_lead_id", ["lead_id"], unique=False)

    op.create_table(
        "lead_notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("author", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_lead_notes_lead_id_leads"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lead_notes")),
    )
    with op.batch_alter_table("lead_notes", schema=None) as batch_op:
        batch_op.create_index("ix_lead_notes_lead_id", ["lead_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("lead_notes", schema=None) as batch_op:
        batch_op.drop_index("ix_lead_notes_lead_id")

    op.drop_table("lead_notes")
    with op.batch_alter_table("lead_history", schema=None) as batch_op:
        batch_op.drop_index("ix_lead_history_lead_id")

    op.drop_table("lead_history")
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_leads_team"))
        batch_op.drop_index(batch_op.f("ix_leads_status"))
        batch_op.drop_index(batch_op.f("ix_leads_owner"))
        batch_op.drop_index(batch_op.f("ix_leads_lead_type"))
        batch_op.drop_index(batch_op.f("ix_leads_created_at"))
        batch_op.drop_index("ix_leads_cooldown")

    op.drop_table("leads")
    op.drop_table("lead_team_agents")
    op.drop_table("lead_rule_versions")
    op.drop_table("lead_teams")
    with op.batch_alter_table("lead_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lead_rules_lead_type"))

    op.drop_table("lead_rules")
    op.drop_table("lead_routes")
