"""Alembic environment: the same metadata and URL as the app (see chute.db.migrate)."""

from alembic import context

from chute.db.models import Base
from chute.db.session import make_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "chute.db.migrate.alembic_config sets sqlalchemy.url"

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
