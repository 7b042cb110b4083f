"""Request and response models of /jobs (pydantic v2), beside /predict's in `service.schemas`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import SampleInfo

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobParams(BaseModel):
    """Query parameters of POST /jobs: how every image of the job is classified (as /predict)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=128, description="Model name; the default if unset.")
    version: int | None = Field(None, ge=1, description="Pin a model version; the newest if unset.")
    qc: Literal["reject", "warn", "off"] = Field("warn", description="As /predict's ?qc.")
    tiling: Literal["auto", "always", "never"] = Field("auto", description="As /predict's ?tiling.")


class ManifestItem(SampleInfo):
    """One image of a manifest: a file under the input root, and where it came from."""

    path: str = Field(min_length=1, max_length=1024, description="Relative to SERVING_JOBS_INPUT_ROOT.")
    page: int = Field(0, ge=0, le=100_000, description="TIFF page.")


class JobManifest(BaseModel):
    """JSON body of POST /jobs: images already on a mounted volume (no upload)."""

    model_config = ConfigDict(extra="forbid")

    items: list[ManifestItem] = Field(min_length=1)


class JobError(BaseModel):
    """An image the job could not classify; the rest of the job goes on."""

    position: int
    source: str
    code: str
    message: str


class JobProgress(BaseModel):
    done: int = Field(description="Images finished (classified or failed).")
    total: int
    failed: int
    images_per_s: float | None = Field(None, description="Since the job started.")
    eta_s: float | None = Field(None, description="At the rate so far; null until one image is done.")


class JobStatus(BaseModel):
    """GET /jobs/{id}: where a job stands."""

    id: str
    state: JobState
    model: str | None
    version: int | None
    qc: str
    tiling: str
    created_at: float = Field(description="Unix seconds.")
    started_at: float | None
    finished_at: float | None
    progress: JobProgress
    errors: list[JobError] = Field(description="The first 100 failed images.")
    links: dict[str, str]


class JobResults(BaseModel):
    """GET /jobs/{id}/results: the per-image rows finished so far and their per-well summary."""

    job: JobStatus
    results: list[dict[str, Any]] = Field(description="As /predict's predictions, with source and provenance.")
    wells: list[dict[str, Any]] = Field(description="Per (plate, time point, well), as cpe-client summarises.")
    plates: list[dict[str, Any]]
