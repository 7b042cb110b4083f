"""POST /predict: images as multipart, raw bytes or base64 JSON -> labels and probabilities."""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, g, jsonify, request

from service import __version__
from service.api.common import begin_inference, get_pipeline, run_inference
from service.api.openapi import IMAGE_BODY, MULTIPART_IMAGES, document
from service.api.uploads import Upload, uploads_from_request
from service.pipeline import InferenceResult, ModelRoute
from service.quality import QcVerdict
from service.schemas import (
    ErrorResponse,
    InputProvenance,
    Prediction,
    PredictParams,
    PredictRequest,
    PredictResponse,
    Provenance,
    QcResult,
    TilingResult,
)
from service.tiling import TileSummary

bp = Blueprint("predict", __name__)


def provenance(result: InferenceResult) -> Provenance:
    """The answer's provenance block (also the v2 response's parameters)."""
    info = result.info
    return Provenance(
        service_version=__version__, model=info.name, model_version=info.version,
        savedmodel_fingerprint=info.fingerprint, preprocessing_version=info.metadata.preprocessing.version,
        preprocessing_sha256=info.metadata.preprocessing.sha256, decision_threshold=info.metadata.decision_threshold,
    )


def _predictions(result: InferenceResult, uploads: list[Upload]) -> list[Prediction]:
    verdicts: list[QcVerdict | None] = list(result.qc) if result.qc is not None else [None] * len(uploads)
    tiles = result.tiles or [None] * len(uploads)
    return [
        Prediction(
            tiling=_tiling(tile, result) if tile is not None else None,
            **upload.sample.model_dump(),
            input=InputProvenance(sha256=record.sha256, shape=list(record.shape), dtype=record.dtype,
                                  bit_depth=record.bit_depth),
            label=label,
            qc=QcResult(status=verdict.status, reasons=verdict.reasons) if verdict is not None else None,  # type: ignore[arg-type]
            probabilities={name: float(p) for name, p in zip(result.class_names, row)},
            model=result.info.name,
            model_version=result.info.version,
        )
        for row, upload, label, verdict, record, tile in zip(
            result.probabilities, uploads, result.labels, verdicts, result.inputs, tiles)
    ]


def _tiling(tile: TileSummary, result: InferenceResult) -> TilingResult:
    return TilingResult(
        mode="tiled", grid=list(tile.grid_shape), tile_size=[result.info.height, result.info.width],
        overlap=get_pipeline().settings.tile_overlap, p_max=tile.p_max, p_mean=tile.p_mean,
        positive_fraction=tile.positive_fraction, p_grid=tile.p_grid,
    )


@bp.post("/predict")
@document(
    "Classify images (multipart, raw bytes or base64 JSON); answers in order",
    tag="predict",
    body={"application/json": PredictRequest, "multipart/form-data": MULTIPART_IMAGES, **IMAGE_BODY},
    query=PredictParams,
    responses={status: (PredictResponse if status == 200 else ErrorResponse)
               for status in (200, 400, 404, 413, 415, 422, 500, 502, 503, 504)},
)
def predict() -> Response:
    """Classify every image in the request; answers in the order the images were sent."""
    params = PredictParams.model_validate(request.args.to_dict())
    route = ModelRoute(params.model, params.version)
    begin_inference(route)  # 404 / 503 before reading a large body
    uploads = uploads_from_request(params)
    g.samples = [upload.sample.model_dump(exclude_none=True, exclude={"id"}) for upload in uploads]
    result = run_inference([upload.image for upload in uploads], route, params.qc, params.tiling)
    if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv":
        return _csv_response(result, uploads)
    response = PredictResponse(
        request_id=g.request_id,
        model=result.info.name,
        model_version=result.info.version,
        provenance=provenance(result),
        predictions=_predictions(result, uploads),
    )
    body = response.model_dump(exclude_none=True)
    for prediction, label in zip(body["predictions"], result.labels):
        prediction.setdefault("label", label)  # null (refused by the gate) stays in the answer
    return jsonify(body)


#: The per-image row of `Accept: text/csv`, named as CellProfiler and pycytominer name columns
#: (the same columns `cpe-client` writes, so both join with CellProfiler output).
CSV_COLUMNS = (
    "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Channel", "Metadata_TimePoint",
    "FileName_Phase", "p_infected", "label", "qc_status", "model_name", "model_version",
    "preprocessing_hash", "input_sha256", "request_id", "savedmodel_fingerprint", "service_version",
)


def _csv_response(result: InferenceResult, uploads: list[Upload]) -> Response:
    info = result.info
    column = result.positive_column
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    verdicts: list[QcVerdict | None] = list(result.qc) if result.qc is not None else [None] * len(uploads)
    for upload, row, label, verdict, record in zip(uploads, result.probabilities, result.labels, verdicts,
                                                   result.inputs):
        sample = upload.sample
        writer.writerow([
            sample.plate or "", sample.well or "", "" if sample.site is None else sample.site,
            sample.channel or "", "" if sample.time_point is None else sample.time_point, sample.id,
            f"{float(row[column]):.6g}", label or "", verdict.status if verdict else "", info.name, info.version,
            info.metadata.preprocessing.sha256 or "", record.sha256, g.request_id, info.fingerprint or "",
            __version__,
        ])
    return Response(buffer.getvalue(), mimetype="text/csv")
