"""revocable sessions, login throttling, no signing key in the database

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

* ``users.session_version``: logout and a password change add 1, which ends the user's sessions;
* ``login_throttle``: failed logins per account and per client address;
* the ``secret_key`` setting is deleted: the key now comes from the environment or a 0600 file
  next to the database (``rlhfkit/feedback/secretkey.py``). The old key was readable by anyone
  who could read the database file, so it is not carried over: everyone logs in again once.
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch_op:
        batch_op.add_column(sa.Column('session_version', sa.Integer(), nullable=False, server_default='0'))
    op.create_table('login_throttle',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_failure_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key')
    )
    op.execute("DELETE FROM settings WHERE key = 'secret_key'")


def downgrade() -> None:
    op.drop_table('login_throttle')
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_column('session_version')
