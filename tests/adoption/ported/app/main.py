from fastapi import FastAPI, HTTPException
from fastapi.routing import APIRoute
from sqlmodel import select

from app.db import SessionDep
from app.db import database, install_metrics
from app.models import Hero, HeroCreate, HeroUpdate


def custom_generate_unique_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}"


app = FastAPI(generate_unique_id_function=custom_generate_unique_id)
database.install(app)
install_metrics(app)


@app.post("/heroes/", response_model=Hero, tags=["heroes"])
def create_hero(hero: HeroCreate, session: SessionDep) -> Hero:
    db_hero = Hero.model_validate(hero)
    session.add(db_hero)
    session.commit()
    session.refresh(db_hero)
    return db_hero


@app.get("/heroes/", response_model=list[Hero], tags=["heroes"])
def read_heroes(session: SessionDep, offset: int = 0, limit: int = 100) -> list[Hero]:
    return list(session.exec(select(Hero).offset(offset).limit(limit)).all())


@app.get("/heroes/{hero_id}", response_model=Hero, tags=["heroes"])
def read_hero(hero_id: int, session: SessionDep) -> Hero:
    hero = session.get(Hero, hero_id)
    if not hero:
        raise HTTPException(status_code=404, detail="Hero not found")
    return hero


@app.patch("/heroes/{hero_id}", response_model=Hero, tags=["heroes"])
def update_hero(hero_id: int, hero: HeroUpdate, session: SessionDep) -> Hero:
    db_hero = session.get(Hero, hero_id)
    if not db_hero:
        raise HTTPException(status_code=404, detail="Hero not found")
    db_hero.sqlmodel_update(hero.model_dump(exclude_unset=True))
    session.add(db_hero)
    session.commit()
    session.refresh(db_hero)
    return db_hero


@app.delete("/heroes/{hero_id}", tags=["heroes"])
def delete_hero(hero_id: int, session: SessionDep) -> dict[str, bool]:
    hero = session.get(Hero, hero_id)
    if not hero:
        raise HTTPException(status_code=404, detail="Hero not found")
    session.delete(hero)
    session.commit()
    return {"ok": True}
