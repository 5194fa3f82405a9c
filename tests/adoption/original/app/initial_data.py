"""Start-up script: create the tables and the first hero (run before the server)."""

import logging

from sqlmodel import Session, SQLModel, select

from app.db import engine
from app.models import Hero

logger = logging.getLogger(__name__)


def init_db(session: Session) -> None:
    SQLModel.metadata.create_all(engine)
    if session.exec(select(Hero).where(Hero.name == "Deadpond")).first() is None:
        session.add(Hero(name="Deadpond", secret_name="Dive Wilson"))
        session.commit()


def main() -> None:
    logger.info("Creating initial data")
    with Session(engine) as session:
        init_db(session)
    logger.info("Initial data created")


if __name__ == "__main__":
    main()
