"""POST /predict: images as multipart, raw bytes or base64 JSON -> labels and probabilities."""

from __future__ import annotations

import base64
import csv
import io

import numpy as np
from flask import Blueprint, Response, g, jsonify, request

from service import __version__
from service.api.common import begin_inference, get_pipeline, run_inference
from service.api.openapi import EXPLAIN_EXAMPLE, IMAGE_BODY, MULTIPART_IMAGES, PNG, document
from service.api.uploads import Upload, uploads_from_request
from service.errors import NotAcceptable
from service.explain import METHOD, Explanation, overlay_png
from service.pipeline import InferenceResult, ModelRoute
from service.quality import QcVerdict
from service.schemas import (
    ErrorResponse,
    ExplanationResult,
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


def predictions(result: InferenceResult, uploads: list[Upload], overlay: bool = True) -> list[Prediction]:
    """One Prediction per image, in order (also a job's stored rows, `service.jobs.runner`)."""
    verdicts: list[QcVerdict | None] = list(result.qc) if result.qc is not None else [None] * len(uploads)
    tiles = result.tiles or [None] * len(uploads)
    explanations: list[Explanation | None] = (
        [*result.explanations] if result.explanations is not None else [None] * len(uploads))
    return [
        Prediction(
            tiling=_tiling(tile, result) if tile is not None else None,
            explanation=_explanation(explanation, result, overlay) if explanation is not None else None,
            **upload.sample.model_dump(),
            input=InputProvenance(sha256=record.sha256, shape=list(record.shape), dtype=record.dtype,
                                  bit_depth=record.bit_depth),
            label=label,
            qc=QcResult(status=verdict.status, reasons=verdict.reasons) if verdict is not None else None,  # type: ignore[arg-type]
            probabilities={name: float(p) for name, p in zip(result.class_names, row)},
            model=result.info.name,
            model_version=result.info.version,
        )
        for row, upload, label, verdict, record, tile, explanation in zip(
            result.probabilities, uploads, result.labels, verdicts, result.inputs, tiles, explanations)
    ]


def _explanation(explanation: Explanation, result: InferenceResult, overlay: bool) -> ExplanationResult:
    png = overlay_png(explanation, get_pipeline().settings.explain_overlay_max_side_px) if overlay else None
    return ExplanationResult(
        method=METHOD, target_class=result.class_names[result.positive_column], log_odds=explanation.log_odds,
        grid=list(explanation.cam.shape), map=np.round(explanation.cam, 4).tolist(), tile=explanation.tile,
        cell_origin_px=list(explanation.cell_origin_px) if explanation.cell_origin_px else None,
        cell_stride_px=list(explanation.cell_stride_px) if explanation.cell_stride_px else None,
        overlay_png=base64.b64encode(png).decode() if png is not None else None,
    )


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
    result, uploads = _infer(params, params.explain)
    if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv":
        return _csv_response(result, uploads)
    return _json_response(result, uploads, params.overlay)


@bp.post("/explain")
@document(
    "Classify images and show where the model saw CPE: Grad-CAM of the positive class on the last "
    "convolutional layer, as an array and a PNG overlay (Accept: image/png with one image: the PNG)",
    tag="predict",
    body={"application/json": PredictRequest, "multipart/form-data": MULTIPART_IMAGES, **IMAGE_BODY},
    query=PredictParams,
    responses={status: (PredictResponse if status == 200 else ErrorResponse)
               for status in (200, 400, 404, 406, 413, 415, 422, 500, 501, 502, 503, 504)},
    example=EXPLAIN_EXAMPLE,
    also={"image/png": PNG},
)
def explain() -> Response:
    """/predict with every image's explanation; one image and `Accept: image/png`: the overlay alone."""
    params = PredictParams.model_validate(request.args.to_dict())
    png = request.accept_mimetypes.best_match(["application/json", "image/png"]) == "image/png"
    result, uploads = _infer(params, True, single=png)
    if png:
        assert result.explanations is not None
        label = result.labels[0]
        return Response(overlay_png(result.explanations[0], get_pipeline().settings.explain_overlay_max_side_px),
                        mimetype="image/png", headers={"X-Label": label or "", "X-Log-Odds":
                                                       f"{result.explanations[0].log_odds:.6g}"})
    return _json_response(result, uploads, params.overlay)


def _infer(params: PredictParams, explain: bool, single: bool = False) -> tuple[InferenceResult, list[Upload]]:
    """The request's images through the pipeline (with their maps when `explain`)."""
    route = ModelRoute(params.model, params.version)
    begin_inference(route)  # 404 / 503 before reading a large body
    uploads = uploads_from_request(params)
    if single and len(uploads) != 1:
        raise NotAcceptable(f"Accept: image/png answers one image's overlay; this request has {len(uploads)}")
    g.samples = [upload.sample.model_dump(exclude_none=True, exclude={"id"}) for upload in uploads]
    result = run_inference([upload.image for upload in uploads], route, params.qc, params.tiling, explain)
    return result, uploads


def _json_response(result: InferenceResult, uploads: list[Upload], overlay: bool) -> Response:
    response = PredictResponse(
        request_id=g.request_id,
        model=result.info.name,
        model_version=result.info.version,
        provenance=provenance(result),
        predictions=predictions(result, uploads, overlay),
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


def csv_row(prediction: Prediction, p_positive: float, origin: Provenance, request_id: str) -> list[object]:
    """One image's CSV row (CSV_COLUMNS), from its Prediction: /predict's and a job's alike."""
    return [
        prediction.plate or "", prediction.well or "", "" if prediction.site is None else prediction.site,
        prediction.channel or "", "" if prediction.time_point is None else prediction.time_point, prediction.id,
        f"{p_positive:.6g}", prediction.label or "", prediction.qc.status if prediction.qc else "",
        prediction.model, prediction.model_version, origin.preprocessing_sha256 or "",
        prediction.input.sha256 if prediction.input else "", request_id, origin.savedmodel_fingerprint or "",
        origin.service_version,
    ]


def csv_text(rows: list[list[object]], columns: tuple[str, ...] = CSV_COLUMNS) -> str:
    """A header and rows as CSV text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def _csv_response(result: InferenceResult, uploads: list[Upload]) -> Response:
    origin = provenance(result)
    column = result.positive_column
    rows = [csv_row(prediction, float(row[column]), origin, g.request_id)
            for prediction, row in zip(predictions(result, uploads), result.probabilities)]
    return Response(csv_text(rows), mimetype="text/csv")
