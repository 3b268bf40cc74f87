"""delivery outbox and channels

Revision ID: a7d3e5c10001
Revises: e60664ca75e4
Create Date: 2026-11-25 14:20:00
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "a7d3e5c10001"
down_revision = "e60664ca75e4"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
