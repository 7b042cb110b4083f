"""Service settings, read from `SERVING_*` environment variables by `create_app` only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Everything an operator can tune; every number carries its unit in its name."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore")

    backend: Literal["tensorflow_local", "tfserving_grpc"] = "tensorflow_local"
    """Where the model runs: in this process, or in TensorFlow Serving over gRPC."""

    model_repository: Path = _REPO_ROOT / "model_repository"
    """Root of TF Serving's layout: `<repository>/<model>/<version>/saved_model.pb`."""

    model_name: str = "cpe_cnn"
    """The model `POST /predict` serves."""

    model_version: int | None = None
    """Pin one version; the highest version in the repository when unset."""

    model_config_file: Path | None = None
    """TF Serving's models.config (text format): models, base paths, version policies, labels."""

    repository_poll_interval_s: float = Field(2.0, ge=0)
    """How often the repository is checked for new versions (TF Serving's
    file_system_poll_wait_seconds); 0 loads once and never reloads."""

    signature_name: str = "serving_default"

    # --- access -------------------------------------------------------------------------------
    api_keys: str | None = Field(None, repr=False)
    """Comma-separated API keys; when set (or api_keys_file), every non-public route needs one."""

    api_keys_file: Path | None = None
    """A file of SHA-256 hex digests of API keys, one per line (# comments): no key in clear."""

    public_paths: str = "/healthz,/readyz,/metrics"
    """Comma-separated paths that answer without a key (probes and the Prometheus scrape); an entry
    ending in "/" opens everything under it (e.g. "/docs/assets/")."""

    metrics_port: int | None = Field(None, gt=0, lt=65536)
    """Serve /metrics only on this second port (and nothing else there); unset: on the main port."""

    # --- input limits -------------------------------------------------------------------------
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Requests with a larger body get 413 before they are read."""

    max_images_per_request: int = Field(64, gt=0)
    """Each image becomes a float32 tensor of the model input (5.6 MB at 1360x1024)."""

    tiling_factor: float = Field(1.5, ge=1.0)
    """`?tiling=auto` tiles an image larger than this times the model's input on a side."""

    tile_overlap: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction by which neighbouring tiles overlap."""

    explain_max_concurrency: int = Field(1, gt=0)
    """Explanations (Grad-CAM: a backward pass) computed at once per worker, outside the batcher."""

    explain_max_wait_s: float = Field(2.0, ge=0)
    """How long an explanation waits for a free slot before 503 `queue_full` + Retry-After."""

    explain_overlay_max_side_px: int = Field(680, ge=16)
    """Longest side of the PNG overlay (the model's input is shrunk to fit: half of 1360 px)."""

    max_decoded_image_bytes: int = Field(128 * 1024 * 1024, gt=0)
    """Header-predicted peak bytes of decoding one image (ImageLimits.max_decoded_bytes): about
    2x the decoded pixels for PNG/JPEG, 1x plus one tile or strip for TIFF."""

    max_tiff_pages: int = Field(10_000, gt=0)
    """Longest TIFF page (IFD) chain walked; longer chains get 413 too_many_pages."""

    max_jpeg_scans: int = Field(100, gt=0)
    """Scans per JPEG picture or JPEG-in-TIFF tile (each progressive scan is a full pass)."""

    decode_budget_bytes: int = Field(512 * 1024 * 1024, gt=0)
    """Decoded-pixel bytes in flight across one worker's threads (DecodeBudget)."""

    decode_budget_timeout_s: float = Field(2.0, ge=0)
    """How long a decode waits for budget before 503 decode_budget_exhausted (Retry-After)."""

    max_image_pixels: int = Field(64_000_000, gt=0)
    """Decompression-bomb guard: a decoded image may not hold more pixels than this."""

    min_image_side_px: int = Field(8, gt=0)
    """Smaller images are rejected as absurd for a microscopy field."""

    # --- batching (names from TF Serving's batching parameters) -------------------------------
    batching: Literal["off", "fixed", "adaptive"] = "fixed"
    max_batch_size: int = Field(8, gt=0)
    """Most images one model call takes; larger requests are split across calls."""

    auto_batch_size: bool = True
    """On a CPU, use the smallest batch size (<= max_batch_size) within 10% of the best cost per
    image measured at warm-up (`service/batching/concurrency.py`); false always uses the maximum."""

    batch_memory_bytes: int = Field(640 * 1024 * 1024, ge=0)
    """On a CPU, activation memory one model call may use: warm-up does not try (and the automatic
    batch size never uses) a batch predicted from the sizes already timed to need more. TF's
    memory pool keeps its peak for life, so this bounds a worker's resident memory; 0: no bound."""

    max_batch_delay_ms: float = Field(5.0, ge=0)
    """Longest time the first image of a batch waits for others to join it."""

    target_latency_ms: float = Field(250.0, gt=0)
    """Adaptive policy: dispatch early when waiting longer would miss this latency."""

    max_queue_size: int = Field(128, gt=0)
    """Images waiting in a worker's queue; past this, requests get 503 with Retry-After."""

    request_timeout_s: float = Field(30.0, gt=0)
    """A request whose images have not come back by then gets 504 (counted from when Gunicorn
    accepted it, so time spent waiting for a thread counts)."""

    max_thread_wait_s: float = Field(10.0, gt=0)
    """A request that waited longer for a free worker thread is shed with 503 + Retry-After."""

    batch_threads: int = Field(0, ge=0)
    """Batches in flight at once per worker (TF Serving's num_batch_threads); 0 chooses from the
    device and the cost curve measured at warm-up (`service/batching/concurrency.py`)."""

    pad_to_allowed_batch_sizes: bool = False
    """Pad batches to powers of two (TF Serving's allowed_batch_sizes): fewer shapes to warm,
    but on CPU the padding rows cost real compute (bench: small CNN 359 -> 538 images/s off)."""

    # --- whole-plate jobs (service/jobs) --------------------------------------------------------
    data_dir: Path | None = None
    """Writable directory for the service's state: the jobs database `jobs.sqlite` when no
    jobs_database_url is set. With neither, /jobs answers 503 jobs_disabled."""

    jobs_database_url: str | None = Field(None, repr=False)
    """SQLAlchemy URL of a shared job table, e.g. postgresql+psycopg://user:pw@host/db: every
    replica and worker then claims work from it (SQLite under data_dir otherwise)."""

    jobs_database_password_file: Path | None = None
    """A file holding the database password (a Compose or Kubernetes secret), so that the URL
    needs none in clear."""

    jobs_input_root: Path | None = None
    """Mounted directory that job manifests name files under; nothing outside it is read.
    Unset: only uploaded images are accepted."""

    jobs_retention_s: float = Field(7 * 24 * 3600.0, gt=0)
    """Finished (succeeded, failed, cancelled) jobs and their results are deleted this long after."""

    jobs_max_items: int = Field(20_000, gt=0)
    """Most images in one job (a 384-well plate at 9 sites is 3,456)."""

    jobs_max_queued_images: int = Field(1, gt=0)
    """Images a worker's job runner claims and queues at once, in batches of their own once no
    interactive image is queued, announced or running. On a CPU one keeps the interactive p99
    where it was (a batch costs per row); on a GPU, where rows are nearly free, raise it."""

    jobs_lease_s: float = Field(60.0, gt=0)
    """A worker's claim on job items expires after this long without renewal: a killed worker's
    items are then claimed by another."""

    jobs_poll_interval_s: float = Field(1.0, gt=0)
    """How often an idle worker looks for job items to claim."""

    # --- runtime --------------------------------------------------------------------------------
    tf_intra_op_threads: int = Field(0, ge=0)
    """TensorFlow's intra-op threads per worker; 0 lets TensorFlow pick (one per core)."""

    tf_inter_op_threads: int = Field(0, ge=0)
    warmup: bool = True
    """Run every batch shape once before a version takes traffic (TF Serving warm-up records
    from assets.extra/ when the version ships them, synthetic input otherwise)."""

    # --- TF Serving backend ---------------------------------------------------------------------
    tfserving_target: str = "localhost:8500"
    """host:port of tensorflow_model_server's gRPC port."""

    tfserving_model_name: str | None = None
    """Model name inside TF Serving, when it differs from `model_name`."""

    model_version_label: str | None = None
    """TF Serving version label (e.g. 'stable'); exclusive with model_version."""

    grpc_timeout_s: float = Field(30.0, gt=0)
    """Deadline of every Predict call; past it the request gets 504."""

    grpc_max_message_bytes: int = Field(512 * 1024 * 1024, gt=0)
    """A batch of 8 full fields is 45 MB as float32: far past gRPC's 4 MB default."""

    grpc_retries: int = Field(3, ge=0)
    """Retries (with backoff) of calls that failed UNAVAILABLE before reaching the server."""

    grpc_tls_ca_path: Path | None = None
    """CA bundle: setting it switches the channel to TLS."""

    grpc_tls_cert_path: Path | None = None
    grpc_tls_key_path: Path | None = None

    load_retry_max_s: float = Field(30.0, gt=0)
    """Longest pause between attempts to load (or reach) the model while not ready."""

    log_level: str = "INFO"

    log_levels: str = ""
    """Per-logger levels, e.g. "service.access=WARNING,service.batching=DEBUG"."""

    @model_validator(mode="after")
    def _one_version_selector(self) -> Settings:
        if self.model_version is not None and self.model_version_label is not None:
            raise ValueError("set model_version or model_version_label, not both")
        return self

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        if self.max_queue_size < max(self.max_batch_size, self.max_images_per_request):
            raise ValueError("max_queue_size must hold a full batch and a full request")
        return self


class ServerSettings(BaseSettings):
    """Gunicorn's process model, read by `service/gunicorn_conf.py` (same `SERVING_` prefix)."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore")

    host: str = "0.0.0.0"
    port: int = Field(8000, gt=0, lt=65536, validation_alias=AliasChoices("PORT", "SERVING_PORT"))
    """Listening port; plain `PORT` (as PaaS and `make run` set it) overrides the default."""

    workers: int = Field(1, gt=0)
    """Worker processes; each loads its own model copy and runs its own batcher."""

    threads: int = Field(16, gt=0)
    """Request threads per worker; at least 2 x max_batch_size so a batch can fill."""

    graceful_timeout_s: int = Field(30, gt=0)
    """Time a worker gets on SIGTERM to finish queued and running batches."""

    metrics_port: int | None = Field(None, gt=0, lt=65536)
    """A second listening port for /metrics alone (see Settings.metrics_port)."""

    request_read_timeout_s: float = Field(30.0, gt=0)
    """Total time a request may take to send its headers and body; then 408 and the thread is freed."""

    request_buffer_bytes: int = Field(256 * 1024 * 1024, ge=0)
    """Bytes of request bodies a worker's event loop may hold before giving requests a thread
    (then further bodies wait unread); 0 reads bodies in the request threads instead."""

    worker_timeout_s: int = Field(120, gt=0)
