"""manual tag values and an index on outbox.origin

Revision ID: a7d3e5c10009
Revises: a7d3e5c10008
Create Date: 2026-12-07 04:00:00
"""

from alembic import op  # noqa: F401

revision = "a7d3e5c10009"
down_revision = "a7d3e5c10008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # PLACEHOLDER (issue 6 helper fills this)


def downgrade() -> None:
    pass
