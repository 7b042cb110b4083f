"""The job tables (SQLAlchemy Core), shared by every worker and replica through one database.

Timestamps are wall-clock Unix seconds (`time.time()`): they are compared across processes
and hosts, where monotonic clocks mean nothing.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

#: Job and item states; an item is `running` while a worker holds its lease.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)

jobs = Table(
    "cpe_jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("idempotency_key", String(256), unique=True, nullable=True),
    Column("request_sha256", String(64), nullable=False),
    Column("state", String(16), nullable=False, default=QUEUED),
    Column("model", String(128), nullable=True),
    Column("version", Integer, nullable=True),
    Column("qc", String(16), nullable=False),
    Column("tiling", String(16), nullable=False),
    Column("total", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Index("ix_cpe_jobs_finished", "state", "finished_at"),
)

items = Table(
    "cpe_job_items", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("cpe_jobs.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("source", Text, nullable=False, comment="A path under the input root, or an upload's file name"),
    Column("uploaded", LargeBinary, nullable=True, comment="An uploaded image's bytes; dropped once finished"),
    Column("page", Integer, nullable=False, default=0),
    Column("sample", Text, nullable=False, comment="SampleInfo as JSON (id, plate, well, site, channel...)"),
    Column("state", String(16), nullable=False, default=QUEUED),
    Column("lease_owner", String(128), nullable=True, comment="The worker holding it, or that finished it"),
    Column("lease_expires_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False, default=0, comment="Claims: times a worker started processing it"),
    Column("p_positive", Float, nullable=True),
    Column("prediction", Text, nullable=True, comment="The answer as /predict gives it, with provenance (JSON)"),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("finished_at", Float, nullable=True),
    Index("ix_cpe_job_items_job", "job_id", "position"),
    Index("ix_cpe_job_items_claim", "state", "lease_expires_at"),
)
