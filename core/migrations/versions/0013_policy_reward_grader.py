"""tenant_policies.reward_grader: a grader with which a triggered retraining trains with the
reinforcement method on the adapter's logged prompts (null: on feedback, as before)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-15 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenant_policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reward_grader", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenant_policies", schema=None) as batch_op:
        batch_op.drop_column("reward_grader")
