"""delivery consents

Revision ID: a7d3e5c10005
Revises: a7d3e5c10004
Create Date: 2026-12-07 02:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "a7d3e5c10005"
down_revision = "a7d3e5c10004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("person_key", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("person_key", "channel", name=op.f("pk_consents")),
    )


def downgrade() -> None:
    op.drop_table("consents")
