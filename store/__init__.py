"""The store: SQLAlchemy models, Alembic migrations, and the code that reads and writes them.

Used by activities and by the ingest path (CLI / API); never by workflows.
"""
