"""the running job's progress, as its engine reports it

Revision ID: 0006
Revises: 0005

``jobs.progress``: the last progress line of the engine running the job (the unsupervised
``inr`` engine fits for minutes: "fit 120/400 iterations, data consistency L1 0.0112"), so an
operator sees with ``dicomnode jobs show`` that a long job is moving, not stuck. Not an event:
``job_events`` hold state transitions only, which a restart trusts.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("progress", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("progress")
