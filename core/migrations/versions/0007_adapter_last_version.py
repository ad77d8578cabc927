"""adapters.last_version: the highest version number an adapter ever gave, so that the
number of a deleted version (`DELETE /v1/models/name@vN`) is never given again

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_version", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE adapters SET last_version = "
        "(SELECT COALESCE(MAX(v.version), 0) FROM adapter_versions v WHERE v.adapter_id = adapters.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.drop_column("last_version")
