"""audiences: rater groups, and whom a model version serves

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 12:00:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'rater_groups',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_table(
        'group_members',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('group_id', sa.Integer(), nullable=False),
        sa.Column('rater_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['group_id'], ['rater_groups.id'], ),
        sa.ForeignKeyConstraint(['rater_id'], ['raters.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('group_id', 'rater_id'),
    )
    with op.batch_alter_table('group_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_group_members_group_id'), ['group_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_group_members_rater_id'), ['rater_id'], unique=False)
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('audience', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False,
                                      server_default='everyone'))
        batch_op.create_index(batch_op.f('ix_model_versions_audience'), ['audience'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_versions_audience'))
        batch_op.drop_column('audience')
    with op.batch_alter_table('group_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_group_members_rater_id'))
        batch_op.drop_index(batch_op.f('ix_group_members_group_id'))
    op.drop_table('group_members')
    op.drop_table('rater_groups')
