"""journeys

Revision ID: a7d3e5c10008
Revises: a7d3e5c10007
Create Date: 2026-12-07 03:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "a7d3e5c10008"
down_revision = "a7d3e5c10007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journeys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journeys")),
        sa.UniqueConstraint("name", name=op.f("uq_journeys_name")),
    )
    op.create_table(
        "journey_positions",
        sa.Column("journey_id", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=100), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["journey_id"],
            ["journeys.id"],
            name=op.f("fk_journey_positions_journey_id_journeys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("journey_id", "person_key", name=op.f("pk_journey_positions")),
    )
    op.create_index(
        op.f("ix_journey_positions_person_key"), "journey_positions", ["person_key"], unique=False
    )
    op.create_table(
        "journey_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("journey_id", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=100), nullable=True),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["journey_id"],
            ["journeys.id"],
            name=op.f("fk_journey_log_journey_id_journeys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_log")),
        sa.UniqueConstraint("key", name=op.f("uq_journey_log_key")),
    )
    op.create_index(op.f("ix_journey_log_journey_id"), "journey_log", ["journey_id"], unique=False)
    op.create_index(op.f("ix_journey_log_person_key"), "journey_log", ["person_key"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_journey_log_person_key"), table_name="journey_log")
    op.drop_index(op.f("ix_journey_log_journey_id"), table_name="journey_log")
    op.drop_table("journey_log")
    op.drop_index(op.f("ix_journey_positions_person_key"), table_name="journey_positions")
    op.drop_table("journey_positions")
    op.drop_table("journeys")
