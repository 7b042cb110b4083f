"""Request, response and error models (pydantic v2): the API contract of the service."""

from __future__ import annotations

from typing import Any, Literal

from cpe_client.wells import normalize_well
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SampleInfo(BaseModel):
    """Where an image came from; optional, echoed back for the lab's pipeline (wells normalised)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256, description="Client's id for the image.")
    plate: str | None = Field(None, max_length=128)
    well: str | None = Field(
        None, max_length=16, examples=["B07"],
        description="Well, normalised to B07 from b7, B7, B07 or r02c07 (96-, 384- and 1536-well plates).",
    )
    site: int | None = Field(None, ge=0, le=10_000, description="Field of view in the well.")
    channel: str | None = Field(None, max_length=64, description="Imaging channel, e.g. the phase-contrast one.")
    time_point: int | None = Field(None, ge=0, le=1_000_000, description="Time point index of a time course.")

    @field_validator("well")
    @classmethod
    def _canonical_well(cls, well: str | None) -> str | None:
        return None if well is None else normalize_well(well)


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
    version: int | None = Field(None, ge=1, description="Pin a model version; the newest if unset.")
    id: str | None = Field(None, max_length=256, description="Raw body: the image's id (default \"0\").")
    plate: str | None = Field(None, max_length=128, description="Raw body: plate of the image.")
    well: str | None = Field(None, max_length=16, description="Raw body: well of the image (normalised).")
    site: int | None = Field(None, ge=0, le=10_000, description="Raw body: field of view.")
    channel: str | None = Field(None, max_length=64, description="Raw body: imaging channel.")
    time_point: int | None = Field(None, ge=0, le=1_000_000, description="Raw body: time point index.")
    tiling: Literal["auto", "always", "never"] = Field(
        "auto", description="Cut images larger than the model's input into tiles instead of resizing: "
                            "'auto' past SERVING_TILING_FACTOR times the input on a side.")
    qc: Literal["reject", "warn", "off"] = Field(
        "warn", description="Quality/out-of-distribution gate: 'reject' answers label null for rejected "
                            "images, 'warn' reports and still labels, 'off' skips it.")
    explain: bool = Field(False, description="/predict: add each image's Grad-CAM map (POST /explain always does).")
    overlay: bool = Field(True, description="With an explanation, include its PNG overlay (base64).")


class QcResult(BaseModel):
    """The quality/out-of-distribution gate's verdict for one image."""

    status: Literal["pass", "warn", "reject"]
    reasons: list[str] = Field(description="e.g. out_of_distribution, out_of_focus, saturated, "
                                           "empty_field, bit_depth")


class InputProvenance(BaseModel):
    """What the image was: the SHA-256 of the bytes received, and its decoded shape and depth."""

    sha256: str | None = None
    shape: list[int]
    dtype: str
    bit_depth: int | None = Field(None, description="8, 12 (in a 16-bit container) or 16; null for floats.")


class Provenance(BaseModel):
    """Which model, build and preprocessing produced the answer, to file with the result."""

    service_version: str
    model: str
    model_version: int
    savedmodel_fingerprint: str | None = Field(None, description="TensorFlow's saved_model_checksum.")
    preprocessing_version: str | None = None
    preprocessing_sha256: str | None = None
    decision_threshold: float | None = Field(None, description="p(positive class) that labels; null: argmax.")


class TilingResult(BaseModel):
    """A tiled image's tiles: the call is its most infected tile's."""

    mode: Literal["tiled"]
    grid: list[int] = Field(description="[rows, columns] of tiles")
    tile_size: list[int] = Field(description="[height, width] of every tile, the model's input")
    overlap: float
    p_max: float
    p_mean: float
    positive_fraction: float
    p_grid: list[list[float]] = Field(description="p(positive class) per tile, row by row")


class ExplanationResult(BaseModel):
    """Where the model saw the positive class: Grad-CAM on its last convolutional layer."""

    method: Literal["grad-cam"]
    target_class: str = Field(description="The class explained: the positive class, whatever the call.")
    log_odds: float = Field(description="The positive class's log-odds, whose gradient weighs the feature maps.")
    grid: list[int] = Field(description="[rows, columns] of the map: the last conv layer's grid.")
    map: list[list[float]] = Field(description="The coarse map, row by row, in [0, 1] (1 at its peak); cell "
                                               "[i, j] lies at cell_origin_px + [i, j] * cell_stride_px.")
    tile: int | None = Field(None, description="Tiled image: the tile explained (its most infected).")
    cell_origin_px: list[float] | None = Field(None, description="[y, x] input pixel under the map's first cell "
                                                                 "(its receptive field's centre); absent: stretch.")
    cell_stride_px: list[float] | None = Field(None, description="[y, x] input pixels between cells' centres.")
    overlay_png: str | None = Field(None, description="Base64 PNG: the map over the image the model saw.")


class Prediction(SampleInfo):
    """The answer for one image."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(description="The call; null when the gate rejected the image under ?qc=reject.")
    qc: QcResult | None = None
    input: InputProvenance | None = None
    tiling: TilingResult | None = Field(None, description="Present when the image was tiled; absent: resized.")
    explanation: ExplanationResult | None = Field(None, description="With ?explain=true and on /explain.")
    probabilities: dict[str, float]
    model: str
    model_version: int


class PredictResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    model: str
    model_version: int
    provenance: Provenance | None = None
    predictions: list[Prediction]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str
    details: object | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- health and status --------------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: Literal["alive"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    models: dict[str, list[int | None]] | None = Field(None, description="Available versions per model.")
    reason: str | None = Field(None, description="Why not ready: loading, or the last load error.")


class StatusResponse(BaseModel):
    """Models, versions, states, signatures, devices and batching (shape may grow)."""

    model_config = ConfigDict(extra="allow")

    ready: bool
    backend: str
    default_model: str
    models: dict[str, Any]


# --- TF Serving REST v1 ----------------------------------------------------------------------------


class TfServingError(BaseModel):
    error: str


class TfServingVersionStatus(BaseModel):
    class Status(BaseModel):
        error_code: str
        error_message: str

    version: str
    state: Literal["LOADING", "AVAILABLE", "UNLOADING", "END"]
    status: Status


class TfServingStatusResponse(BaseModel):
    model_version_status: list[TfServingVersionStatus]


class TfServingMetadataResponse(BaseModel):
    model_spec: dict[str, str]
    metadata: dict[str, Any]


class TfServingPredictRequest(BaseModel):
    """TF Serving's predict body: row (`instances`) or columnar (`inputs`) form."""

    model_config = ConfigDict(extra="forbid")

    signature_name: str | None = None
    instances: list[Any] | None = None
    inputs: Any = None

    @model_validator(mode="after")
    def _exactly_one_form(self) -> TfServingPredictRequest:
        if (self.instances is None) == (self.inputs is None):
            raise ValueError("exactly one of 'instances' (row format) or 'inputs' (columnar format) is required")
        return self


class TfServingPredictResponse(BaseModel):
    predictions: list[list[float]] | None = None
    outputs: list[list[float]] | None = None


# --- Open Inference Protocol v2 --------------------------------------------------------------------


class V2Error(BaseModel):
    error: str


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] | None = None


class V2RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int] = Field(min_length=1, max_length=4)
    datatype: Literal["FP32", "UINT8", "UINT16", "BYTES"]
    parameters: dict[str, Any] | None = None
    data: Any = None


class V2RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class V2InferenceRequest(BaseModel):
    """The v2 inference request body (the JSON part when the binary extension is used)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[V2RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[V2RequestOutput] | None = None


class V2ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="The answer's provenance.")
    outputs: list[V2ResponseOutput]
