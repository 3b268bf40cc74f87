"""scheduled jobs

Revision ID: a7d3e5c10003
Revises: a7d3e5c10002
Create Date: 2026-11-25 14:20:00
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "a7d3e5c10003"
down_revision = "a7d3e5c10002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
