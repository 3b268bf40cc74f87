"""Liveness: public on purpose, says nothing about the data."""

from fastapi import APIRouter

router = APIRouter()


@router.get("/healthz", tags=["system"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}
