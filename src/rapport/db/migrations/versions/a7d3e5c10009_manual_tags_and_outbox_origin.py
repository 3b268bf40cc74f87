"""manual tag values and an index on outbox.origin

Revision ID: a7d3e5c10009
Revises: a7d3e5c10008
Create Date: 2026-12-07 04:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "a7d3e5c10009"
down_revision = "a7d3e5c10008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "manual_tag_values",
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.Integer(), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("set_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["tag_id"],
            ["tags.id"],
            name=op.f("fk_manual_tag_values_tag_id_tags"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tag_id", "person_key", name=op.f("pk_manual_tag_values")),
    )
    op.create_index("ix_outbox_origin_status", "outbox", ["origin", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_outbox_origin_status", table_name="outbox")
    op.drop_table("manual_tag_values")
