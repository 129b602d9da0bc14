"""prompts written by raters on the Create page

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 10:00:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Comparisons already carry a source (queue, import, loop, ai): a Create set is source "create" and
    # status "offered" until its rater answers, so it needs no column of its own.
    with op.batch_alter_table('prompts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('written_by', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_prompts_written_by'), ['written_by'], unique=False)
        batch_op.create_foreign_key('fk_prompts_written_by_raters', 'raters', ['written_by'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('prompts', schema=None) as batch_op:
        batch_op.drop_constraint('fk_prompts_written_by_raters', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_prompts_written_by'))
        batch_op.drop_column('written_by')
