"""model versions unique per profile: one weights file may serve several profiles

Revision ID: 0007
Revises: 0006

A contrast-agnostic network (``iqt-mc``) is one file per factor for several acquisition
profiles (T2 and FLAIR at 0.36 T, T1/T2/FLAIR at 64 mT). The registry keeps one
``model_versions`` row per (profile, factor) it serves, all pointing at that file, so each
profile is activated, rolled back and audited on its own (``model_activations`` are per profile
already) and a job still names the one row it ran. The unique index therefore moves from
(name, version, factor) to (name, version, profile, factor); rows written before are unchanged.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD = "ux_model_versions_name_version_factor"
NEW = "ux_model_versions_name_version_profile_factor"


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(OLD)
        batch_op.create_index(NEW, ["name", "version", "profile", "factor"], unique=True)


def downgrade() -> None:
    shared = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT name, version, factor FROM model_versions "
                "GROUP BY name, version, factor HAVING COUNT(*) > 1"
            )
        )
        .first()
    )
    if shared is not None:
        name, version, factor = shared
        raise RuntimeError(
            f"cannot downgrade below 0007: {name}@{version}/k{factor} has rows for several "
            "profiles (removed ones included: they keep the audit trail), which the older "
            "schema cannot hold"
        )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(NEW)
        batch_op.create_index(OLD, ["name", "version", "factor"], unique=True)
