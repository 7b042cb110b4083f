"""Request, response and error models (pydantic v2): the API contract of the service."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_WELL_PATTERN = r"^[A-Pa-p](0?[1-9]|1[0-9]|2[0-4])$"  # 6- to 384-well plates: A1..P24


class SampleInfo(BaseModel):
    """Where an image came from; optional, echoed back unchanged for the lab's pipeline."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256, description="Client's id for the image.")
    plate: str | None = Field(None, max_length=128)
    well: str | None = Field(None, pattern=_WELL_PATTERN, description="Well such as B07.")
    site: int | None = Field(None, ge=0, le=10_000, description="Field of view in the well.")


class ImageInstance(SampleInfo):
    """One base64-encoded image in a JSON request."""

    b64: str = Field(min_length=1, description="PNG, JPEG or TIFF bytes, base64-encoded.")
    page: int | None = Field(None, ge=0, le=100_000, description="TIFF page; 0 by default.")


class PredictRequest(BaseModel):
    """JSON body of POST /predict."""

    model_config = ConfigDict(extra="forbid")

    instances: list[ImageInstance] = Field(min_length=1)


class PredictParams(BaseModel):
    """Query parameters of POST /predict."""

    model_config = ConfigDict(extra="forbid")

    page: int = Field(0, ge=0, le=100_000, description="TIFF page for multipart/raw bodies.")
    model: str | None = Field(None, max_length=128, description="Model name; the default if unset.")


class Prediction(SampleInfo):
    """The answer for one image."""

    model_config = ConfigDict(extra="forbid")

    label: str
    probabilities: dict[str, float]
    model: str
    model_version: int


class PredictResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    model: str
    model_version: int
    predictions: list[Prediction]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str
    details: object | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
