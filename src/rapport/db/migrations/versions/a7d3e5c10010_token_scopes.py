"""API token scopes and rotation

Revision ID: a7d3e5c10010
Revises: a7d3e5c10009
Create Date: 2026-12-07 04:00:01
"""

import sqlalchemy as sa
from alembic import op

revision = "a7d3e5c10010"
down_revision = "a7d3e5c10009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scopes", sa.String(length=100), nullable=False, server_default="read,write")
        )
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("rotated_from", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_api_tokens_rotated_from_api_tokens"),
            "api_tokens",
            ["rotated_from"],
            ["id"],
            ondelete="SET NULL",
        )
    # existing tokens keep what their role allowed: admins also get the admin scope
    op.execute("UPDATE api_tokens SET scopes = 'read,write,admin' WHERE role = 'admin'")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.alter_column("scopes", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_api_tokens_rotated_from_api_tokens"), type_="foreignkey"
        )
        batch_op.drop_column("rotated_from")
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("scopes")
