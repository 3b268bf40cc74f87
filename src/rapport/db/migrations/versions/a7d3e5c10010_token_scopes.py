"""API token scopes and rotation

Revision ID: a7d3e5c10010
Revises: a7d3e5c10009
Create Date: 2026-12-07 04:00:01
"""

from alembic import op  # noqa: F401

revision = "a7d3e5c10010"
down_revision = "a7d3e5c10009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # PLACEHOLDER (security helper fills this)


def downgrade() -> None:
    pass
