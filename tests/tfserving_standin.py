"""A stand-in for tensorflow_model_server: TF Serving's gRPC API over the real SavedModels.

TF Serving's binary cannot be installed here (no container registry; not on PyPI or Debian),
so tests and the benchmark run this instead: a real `grpc.server` implementing
`PredictionService` and `ModelService` with the servicer base classes from
`tensorflow_serving.apis`, running the same SavedModel with TensorFlow, returning the
signature_def map TF Serving returns (read from saved_model.pb) and TF Serving's error statuses.

    python -m tests.tfserving_standin --port 8500 --model-repository model_repository
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from service.batching import MicroBatcher
from service.errors import ServiceError
from service.models import list_models, list_versions


class _Servable:
    """One loaded version: its signatures as TF functions and as TF Serving reports them."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name = name
        self.version = version
        self.loaded = tf.saved_model.load(str(path))
        saved_model = saved_model_pb2.SavedModel()
        saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
        self.signature_defs = saved_model.meta_graphs[0].signature_def


class StandInServer(
    prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer
):
    """Serves the latest version of every model in a repository."""

    def __init__(self, repository: Path) -> None:
        self.servables: dict[str, _Servable] = {}
        for name in list_models(repository):
            version = list_versions(repository, name)[-1]
            self.servables[name] = _Servable(name, version, repository / name / str(version))
        self.delay_s = 0.0  # tests raise it to provoke DEADLINE_EXCEEDED
        self.batching = False
        self.batch_sizes: list[int] = []
        self._batchers: dict[tuple[str, str], MicroBatcher] = {}
        self.predict_calls = 0
        self.predict_metadata: list[dict[str, str]] = []  # each Predict's gRPC metadata (traceparent...)
        self._lock = threading.Lock()

    def _servable(self, spec: Any, context: grpc.ServicerContext) -> _Servable:
        servable = self.servables.get(spec.name)
        if servable is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version") and spec.version.value != servable.version:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({spec.name}, {spec.version.value})",
            )
        return servable

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:
        servable = self._servable(request.model_spec, context)
        signature_name = request.model_spec.signature_name or "serving_default"
        if signature_name not in servable.signature_defs:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature name: "{signature_name}" not found in signature def',
            )
        signature_def = servable.signature_defs[signature_name]
        for key in request.inputs:
            if key not in signature_def.inputs:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input tensor alias not found in signature: {key}")
        missing = set(signature_def.inputs) - set(request.inputs)
        if missing:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Missing input: {sorted(missing)}")
        with self._lock:
            self.predict_calls += 1
            self.predict_metadata.append({item.key: item.value for item in context.invocation_metadata()})
        if self.delay_s:
            time.sleep(self.delay_s)
        function = servable.loaded.signatures[signature_name]
        try:
            if self.batching:
                outputs = self._run_batched(servable, signature_name, request, context)
            else:
                inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
                outputs = function(**inputs)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err).splitlines()[0])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        wanted = set(request.output_filter) or set(outputs)
        for key, value in outputs.items():
            if key in wanted:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        return response

    def _run_batched(
        self, servable: _Servable, signature_name: str, request: Any, context: grpc.ServicerContext
    ) -> dict[str, Any]:
        """TF Serving's --enable_batching, with deploy/tfserving/batching_parameters.txt's values
        (max 8, 5 ms, padded to 1/2/4/8): requests from every client merge into one call."""
        [input_key] = servable.signature_defs[signature_name].inputs
        key = (servable.name, signature_name)
        with self._lock:
            if key not in self._batchers:
                function = servable.loaded.signatures[signature_name]
                self._batchers[key] = MicroBatcher(
                    # Every output of the signature, row-aligned (the batcher splits dicts of them).
                    lambda rows: {name: value.numpy() for name, value in function(**{input_key: tf.constant(rows)}).items()},
                    max_batch_size=8, max_batch_delay_s=0.005, max_queue_size=64, pad_batches=True,
                    on_batch=lambda report: self.batch_sizes.append(report.size),
                    name=f"standin-{servable.name}",
                )
        rows = tf.make_ndarray(request.inputs[input_key]).astype(np.float32)
        try:
            outputs = self._batchers[key].submit(rows).future.result(timeout=60)
            assert isinstance(outputs, dict)
            return outputs
        except ServiceError as err:  # queue full: TF Serving's max_enqueued_batches answer
            context.abort(grpc.StatusCode.UNAVAILABLE, err.message)
            raise  # unreachable: abort raises

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        servable = self._servable(request.model_spec, context)
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def is required")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            if not key.startswith("__"):
                signatures.signature_def[key].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signatures)
        return response

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        servable = self._servable(request.model_spec, context)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = servable.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


class _LoggedList(list[int]):
    """A list that also writes each appended batch size as a line (read by tests)."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._stream = stream

    def append(self, size: int) -> None:
        super().append(size)
        self._stream.write(f"{size}\n")


def serve(repository: Path, port: int, max_workers: int = 8) -> tuple[grpc.Server, StandInServer]:
    """Start the stand-in on 127.0.0.1:port (0 = any free port); returns (server, servicer)."""
    servicer = StandInServer(repository)
    options = [("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    servicer.port = bound  # type: ignore[attr-defined]
    return server, servicer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--delay-s", type=float, default=0.0, help="sleep in every Predict")
    parser.add_argument("--enable-batching", action="store_true", help="server-side batching, as TF Serving's")
    parser.add_argument("--batch-log", type=Path, help="append each server-side batch size to this file")
    args = parser.parse_args()
    server, servicer = serve(args.model_repository, args.port)
    servicer.delay_s = args.delay_s
    servicer.batching = args.enable_batching
    if args.batch_log is not None:
        log = args.batch_log.open("a", buffering=1)
        servicer.batch_sizes = _LoggedList(log)
    print(f"TF Serving stand-in on 127.0.0.1:{servicer.port} serving {sorted(servicer.servables)}", flush=True)  # type: ignore[attr-defined]
    server.wait_for_termination()


if __name__ == "__main__":
    main()
