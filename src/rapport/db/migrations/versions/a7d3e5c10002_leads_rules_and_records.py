"""leads rules and records

Revision ID: a7d3e5c10002
Revises: a7d3e5c10001
Create Date: 2026-11-25 14:20:00
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "a7d3e5c10002"
down_revision = "a7d3e5c10001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
