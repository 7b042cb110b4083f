"""The scale-out backend: TensorFlow Serving's PredictionService over gRPC.

The signature (tensor names, shapes) comes from `GetModelMetadata`, readiness from
`GetModelStatus`; nothing about the model is hard-coded. gRPC statuses are translated into the
service's error tree, so clients see the same JSON errors whichever backend runs the model.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray

from service import tracing
from service.config import Settings
from service.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidInput,
    ModelNotFound,
    RemoteBackendError,
    ServiceError,
)
from service.models.metadata import check_preprocessing_skew, read_metadata
from service.models.repository import ModelVersion
from service.models.signature import (
    CAM_OUTPUT,
    LOG_ODDS_OUTPUT,
    ModelInfo,
    build_model_info,
    explain_signature,
)

_log = logging.getLogger(__name__)

_STATUS_TO_ERROR: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidInput,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.UNAVAILABLE: BackendUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BackendUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: BackendTimeout,
}


def translate_rpc_error(err: grpc.RpcError, what: str) -> ServiceError:
    """Map a gRPC status to the HTTP-facing error (INVALID_ARGUMENT -> 400, ... -> 504)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    error_class = _STATUS_TO_ERROR.get(code, RemoteBackendError)
    return error_class(f"TF Serving {what}: {code.name}: {details}")


def _to_tensor_proto(batch: NDArray[np.float32]) -> Any:
    """float32 ndarray -> TensorProto via tensor_content (one memcpy, no per-value fields)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    array = np.ascontiguousarray(batch, dtype=np.float32)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(side)) for side in array.shape]
    )
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=array.tobytes())


def _from_tensor_proto(tensor: Any) -> NDArray[np.float32]:
    from tensorflow.core.framework import types_pb2

    if tensor.dtype != types_pb2.DT_FLOAT:
        raise RemoteBackendError(f"TF Serving returned dtype {tensor.dtype}, expected DT_FLOAT")
    shape = [int(dim.size) for dim in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype=np.float32)
    else:
        values = np.asarray(tensor.float_val, dtype=np.float32)
    return values.reshape(shape)


class TfServingGrpcBackend:
    """One channel per worker, created in `load()` (after the fork), reused for every call."""

    name = "tfserving_grpc"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._channel: grpc.Channel | None = None
        self._predict_stub: Any = None
        self._model_stub: Any = None
        self._connectivity = grpc.ChannelConnectivity.IDLE
        self._lock = threading.Lock()
        self.info: ModelInfo | None = None
        self.devices = [f"tfserving://{settings.tfserving_target}"]

    @property
    def remote_model_name(self) -> str:
        return self._settings.tfserving_model_name or self._settings.model_name

    # --- channel ---------------------------------------------------------------------------------

    def _open_channel(self) -> grpc.Channel:
        settings = self._settings
        options = [
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            # Keepalive only while calls are in flight: TF Serving's gRPC server, like every
            # gRPC server by default, answers idle pings more often than every 5 min with
            # GOAWAY (too_many_pings).
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
            # Behind a headless Service (dns:///tfserving:8500) spread calls over every pod
            # instead of pick_first's one.
            ("grpc.lb_policy_name", "round_robin"),
            # Reconnect quickly after TF Serving restarts instead of gRPC's 120 s max backoff.
            ("grpc.max_reconnect_backoff_ms", 2_000),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
        ]
        if settings.grpc_tls_ca_path is None:
            channel = grpc.insecure_channel(settings.tfserving_target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=settings.grpc_tls_ca_path.read_bytes(),
                private_key=settings.grpc_tls_key_path.read_bytes() if settings.grpc_tls_key_path else None,
                certificate_chain=settings.grpc_tls_cert_path.read_bytes() if settings.grpc_tls_cert_path else None,
            )
            channel = grpc.secure_channel(settings.tfserving_target, credentials, options=options)
        channel.subscribe(self._on_connectivity, try_to_connect=True)
        return channel

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        self._connectivity = state

    def reachable(self) -> bool:
        """False while the channel is in TRANSIENT_FAILURE (TF Serving down)."""
        return self._connectivity != grpc.ChannelConnectivity.TRANSIENT_FAILURE

    def _model_spec(self, signature_name: str | None = None) -> Any:
        from tensorflow_serving.apis import model_pb2

        spec = model_pb2.ModelSpec(name=self.remote_model_name,
                                   signature_name=signature_name or self._settings.signature_name)
        if self._settings.model_version is not None:
            spec.version.value = self._settings.model_version
        elif self._settings.model_version_label:
            spec.version_label = self._settings.model_version_label
        return spec

    def _call(self, method: Any, request: Any, what: str) -> Any:
        """Call with a deadline; retry UNAVAILABLE with jittered backoff within that deadline."""
        settings = self._settings
        deadline = time.monotonic() + settings.grpc_timeout_s
        for attempt in range(settings.grpc_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendTimeout(f"TF Serving {what}: no answer within {settings.grpc_timeout_s:g} s")
            try:
                # The client span's W3C traceparent travels in the call's metadata to TF Serving.
                with tracing.span(f"tensorflow.serving/{what}", client=True, **{"rpc.system": "grpc"}):
                    return method(request, timeout=remaining, metadata=tracing.grpc_metadata())
            except grpc.RpcError as err:
                # NOTE: UNAVAILABLE with wait_for_ready off means the channel had no connection,
                # so the request never left this process: retrying cannot run it twice.
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == settings.grpc_retries:
                    raise translate_rpc_error(err, what) from err
                pause = min(0.1 * 2**attempt, 1.0) * (0.5 + random.random())
                time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        raise AssertionError("unreachable")

    # --- Backend protocol ------------------------------------------------------------------------

    def load(self) -> ModelInfo:
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            get_model_status_pb2,
            model_service_pb2_grpc,
            prediction_service_pb2_grpc,
        )

        with self._lock:
            if self._channel is None:
                self._channel = self._open_channel()
                self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
                self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        spec = self._model_spec()
        status = self._call(
            self._model_stub.GetModelStatus,
            get_model_status_pb2.GetModelStatusRequest(model_spec=spec),
            "GetModelStatus",
        )
        available = [
            v.version for v in status.model_version_status
            if v.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        ]
        if not available:
            raise BackendUnavailable(f"TF Serving has no AVAILABLE version of '{spec.name}'")
        metadata = self._call(
            self._predict_stub.GetModelMetadata,
            get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"]),
            "GetModelMetadata",
        )
        signatures = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signatures)
        signature_name = self._settings.signature_name
        if signature_name not in signatures.signature_def:
            raise InvalidInput(
                f"TF Serving model '{spec.name}' has no signature '{signature_name}' "
                f"(has {sorted(signatures.signature_def)})"
            )
        signature = signatures.signature_def[signature_name]
        input_shapes = {
            key: [dim.size if dim.size >= 0 else None for dim in tensor.tensor_shape.dim]
            for key, tensor in signature.inputs.items()
        }
        version_number = int(metadata.model_spec.version.value or max(available))
        # Class names live beside the SavedModel; read them from the shared repository when the
        # same files are mounted here, as they are in the compose and Kubernetes deployments.
        local_dir = self._settings.model_repository / self._settings.model_name / str(version_number)
        version = ModelVersion(
            name=self._settings.model_name, version=version_number, path=local_dir,
            metadata=read_metadata(local_dir),
        )
        check_preprocessing_skew(version.name, version_number, version.metadata)
        explain = explain_signature({name: list(sig.outputs) for name, sig in signatures.signature_def.items()})
        self.info = build_model_info(version, signature_name, input_shapes, list(signature.outputs), explain)
        _log.info("TF Serving at %s serves %s version %d", self._settings.tfserving_target,
                  spec.name, version_number)
        return self.info

    def predict(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        assert self.info is not None, "load() first"
        return self._predict([self.info.output_key, *self.info.extra_outputs], batch)

    def explain(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """TF Serving runs the version's explain signature (Predict with its signature name)."""
        assert self.info is not None and self.info.explain_signature is not None, "an explainable version"
        return self._predict([CAM_OUTPUT, LOG_ODDS_OUTPUT], batch, self.info.explain_signature)

    def _predict(self, wanted: list[str], batch: NDArray[np.float32],
                 signature_name: str | None = None) -> dict[str, NDArray[np.float32]]:
        from tensorflow_serving.apis import predict_pb2

        assert self.info is not None, "load() first"
        request = predict_pb2.PredictRequest(model_spec=self._model_spec(signature_name), output_filter=wanted)
        request.inputs[self.info.input_key].CopyFrom(_to_tensor_proto(batch))
        what = f"Predict ({signature_name})" if signature_name else "Predict"
        response = self._call(self._predict_stub.Predict, request, what)
        missing = [name for name in wanted if name not in response.outputs]
        if missing:
            raise RemoteBackendError(f"TF Serving response lacks outputs {missing}")
        return {name: _from_tensor_proto(response.outputs[name]) for name in wanted}

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.unsubscribe(self._on_connectivity)
                self._channel.close()
                self._channel = None
