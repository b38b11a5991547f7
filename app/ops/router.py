"""Operations endpoints, unauthenticated: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel

from app.errors import SERVER_PROBLEMS
from app.metrics import FLEET
from app.ops.service import OpsService

router = APIRouter(tags=["operations"])

METRICS_EXAMPLE = """\
# HELP callbridge_callbacks_total Exotel status callbacks received, by outcome.
# TYPE callbridge_callbacks_total counter
callbridge_callbacks_total{outcome="applied"} 1234.0
"""


class Health(BaseModel):
    status: Literal["ok"]


HEALTHY = {"description": "Healthy", "content": {"application/json": {"example": {"status": "ok"}}}}


def _service(request: Request) -> OpsService:
    service: OpsService = request.app.state.ops
    return service


@router.get(
    "/healthz",
    summary="Liveness: the process is up and serving",
    description="Touches nothing else, so a database outage does not get the process restarted.",
    response_model=Health,
    responses={200: HEALTHY, 500: SERVER_PROBLEMS[500]},
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the database answers within 2 seconds",
    response_model=Health,
    responses={200: HEALTHY, **SERVER_PROBLEMS},
)
async def readyz(request: Request) -> Health:
    await _service(request).check_database()
    return Health(status="ok")


@router.get(
    "/metrics",
    summary="Prometheus metrics, in the text exposition format",
    description="Counters of this process; the relay and reconciler gauges, counted from the "
    "database on each scrape (NaN when it did not answer), only from processes that run the "
    "jobs: aggregate those with max() across the fleet.",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}, "example": METRICS_EXAMPLE}},
        },
        500: SERVER_PROBLEMS[500],
    },
)
async def metrics(request: Request) -> Response:
    service = _service(request)
    exposition = generate_latest(REGISTRY)
    if service.exports_fleet_gauges:
        await service.refresh_gauges()
        exposition += generate_latest(FLEET)
    return Response(exposition, media_type=CONTENT_TYPE_LATEST)
