"""A small notes API: FastAPI + SQLAlchemy on Gilgal's PostgreSQL add-on, schema by Alembic
(run in the release phase, before any new instance starts)."""
import os

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import func, select, text

from .db import Note, Session

app = FastAPI(title="notes")


class NoteIn(BaseModel):
    body: str


class NoteOut(BaseModel):
    id: int
    body: str


@app.get("/health")
def health() -> dict:
    with Session() as session:
        session.execute(text("SELECT 1"))
    return {"ok": True}


@app.get("/")
def index() -> dict:
    with Session() as session:
        count = session.scalar(select(func.count()).select_from(Note))
    return {
        "app": "fastapi-notes",
        "release": os.environ.get("GILGAL_RELEASE"),
        "notes": count,
    }


@app.post("/notes", status_code=201)
def create_note(note: NoteIn) -> NoteOut:
    with Session.begin() as session:
        row = Note(body=note.body)
        session.add(row)
        session.flush()
        return NoteOut(id=row.id, body=row.body)


@app.get("/notes")
def list_notes() -> list[NoteOut]:
    with Session() as session:
        rows = session.scalars(select(Note).order_by(Note.id)).all()
        return [NoteOut(id=r.id, body=r.body) for r in rows]


@app.get("/notes/{note_id}")
def get_note(note_id: int) -> NoteOut:
    with Session() as session:
        row = session.get(Note, note_id)
        if row is None:
            raise HTTPException(status_code=404, detail="no such note")
        return NoteOut(id=row.id, body=row.body)
