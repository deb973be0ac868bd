"""The database connection: DATABASE_URL comes from Gilgal's postgres add-on."""
import os

from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy import String, Integer


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set: run `gilgal addons create postgres -p <app>`")
    return url


# pool_pre_ping: after a database restart, stale connections are replaced, not reused.
engine = create_engine(database_url(), pool_pre_ping=True, pool_size=5)
Session = sessionmaker(engine)


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(String(2000))
