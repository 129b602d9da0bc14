"""rater sessions, app texts, rating guide seen

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:30:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'rater_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('sid_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('rater_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('revoked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('sid_sha256'),
    )
    with op.batch_alter_table('rater_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rater_sessions_rater_id'), ['rater_id'], unique=False)
    op.create_table(
        'app_texts',
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('text', sqlmodel.sql.sqltypes.AutoString(length=20000), nullable=False),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    with op.batch_alter_table('raters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('guide_seen_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('raters', schema=None) as batch_op:
        batch_op.drop_column('guide_seen_at')
    op.drop_table('app_texts')
    with op.batch_alter_table('rater_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rater_sessions_rater_id'))
    op.drop_table('rater_sessions')
