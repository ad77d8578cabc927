"""fine-tuning jobs: pause and resume (pause_requested, resume_point), the client's
`metadata`, and checkpoints callable as models (job_checkpoints.digest)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pause_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("resume_point", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("user_metadata", sa.JSON(), nullable=True))
    with op.batch_alter_table("job_checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_job_checkpoints_digest"), ["digest"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_checkpoints_digest"))
        batch_op.drop_column("digest")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("user_metadata")
        batch_op.drop_column("resume_point")
        batch_op.drop_column("pause_requested")
