"""several machines: job leases and publication, outbox claims, the workers table

Revision ID: 0005
Revises: 0004

``jobs.lease_owner``/``lease_until``: which worker holds a ``processing`` job and until when
(renewed while it runs; another worker takes the job over only once it has expired).
``jobs.published_at``: when the job's id last went to the broker (NULL: it needs a message).
``deliveries.claim_owner``/``claim_until``: the sender that holds an outbox row, so that two
senders never send the same row at once. ``workers``: one row per Celery worker, for
``dicomnode status`` and ``/metrics``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_owner", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("claim_until", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("pool", sa.String(length=16), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("current_jobs", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("jobs_done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("jobs_failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("jobs_returned", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("busy_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_jobs_state_lease", "jobs", ["state", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_jobs_state_lease", table_name="jobs")
    op.drop_table("workers")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("claim_until")
        batch_op.drop_column("claim_owner")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("published_at")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("lease_owner")
