"""An AWS Batch job as a run's job: its state and exit code from ``describe_jobs``, its log
from CloudWatch Logs (``BatchJobHandle``), read from a byte offset like every other job handle.

The engine runs with ``--events_stdout``: its events reach the same log stream as its log lines,
each prefixed ``EVENT_PREFIX``. ``read("log", ...)`` is the stream without them,
``read("events", ...)`` the event lines (dqlctl's event parser strips the prefix). A job retried
by Batch (a spot host taken back) has one stream per attempt: they are read in order, so a
follower sees the resumed attempt's lines after the first one's.

Batch's view of a job, as dqlctl's instance states (``describe``): SUBMITTED, PENDING, RUNNABLE and
STARTING are ``pending``, RUNNING is ``running``; SUCCEEDED and FAILED are ``terminated`` (the
container and its host are gone; the handle's ``status`` says how it ended).
"""

from __future__ import annotations

from typing import Any

from providers.aws.api import code
from providers.base import JobStatus, ProviderError

#: the engine's ``--events_stdout`` prefix (engine/events.py ``STDOUT_PREFIX``; a test checks
#: the two agree: providers import nothing from the engine)
EVENT_PREFIX = "@dql-event "
#: the log group Batch's default awslogs driver writes every job's stdout and stderr to
LOG_GROUP = "/aws/batch/job"
#: Batch's job states before the container ends
ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
STATES = {**{s: "pending" for s in ACTIVE[:-1]}, "RUNNING": "running",
          "SUCCEEDED": "terminated", "FAILED": "terminated"}
#: the status reason Batch gives when the EC2 host under a job went (a spot interruption)
HOST_GONE = "Host EC2"
#: the instance id a run has between ``launch`` (the queue ready) and ``start_job`` (submitted)
UNSUBMITTED = "unsubmitted-"


def describe_job(batch: Any, job_id: str) -> dict[str, Any] | None:
    """The job as ``describe_jobs`` has it; None when Batch does not know it (never submitted,
    or expired: Batch forgets ended jobs after a while)."""
    if job_id.startswith(UNSUBMITTED):
        return None
    jobs = batch.describe_jobs(jobs=[job_id]).get("jobs") or []
    return jobs[0] if jobs else None


def exit_code_of(job: dict[str, Any]) -> int | None:
    """The container's exit code: the job's, else its last attempt's (None: it never ran, or
    was killed with its host)."""
    found = (job.get("container") or {}).get("exitCode")
    for attempt in reversed(job.get("attempts") or []):
        if found is not None:
            break
        found = (attempt.get("container") or {}).get("exitCode")
    return int(found) if found is not None else None


def job_status(job: dict[str, Any]) -> JobStatus:
    """How the job stands (``JobHandle.status``). An engine that exited non-zero gets no reason
    (dqlctl says "engine exited with code N" and the log's last line); a job that ended without
    an exit code gets Batch's status reason; one whose spot host went after Batch's retries
    carries a notice, so dqlctl can relaunch it from its checkpoint."""
    status = job.get("status")
    if status in ACTIVE:
        return JobStatus(True)
    exit_code = exit_code_of(job)
    if status == "SUCCEEDED":
        return JobStatus(False, 0 if exit_code is None else exit_code)
    reason = job.get("statusReason") or None
    notice = None
    if reason and reason.startswith(HOST_GONE):
        notice = {"cloud": "aws", "notice": "batch", "action": "terminate", "reason": reason}
    return JobStatus(False, exit_code, reason if exit_code is None else None, notice)


def log_streams(job: dict[str, Any]) -> list[str]:
    """The job's CloudWatch log streams, one per attempt, in order."""
    names = [(a.get("container") or {}).get("logStreamName") for a in job.get("attempts") or []]
    names.append((job.get("container") or {}).get("logStreamName"))
    out: list[str] = []
    for name in names:
        if name and name not in out:
            out.append(name)
    return out


class BatchJobHandle:
    """A run's Batch job (``JobHandle``): see the module docstring. The log is read once, each
    stream from where the last read ended (CloudWatch's forward token), and kept here."""

    def __init__(self, batch: Any, logs: Any, job_id: str, log_group: str = LOG_GROUP) -> None:
        self.batch = batch
        self.logs = logs
        self.job_id = job_id
        self.log_group = log_group
        self._tokens: dict[str, str | None] = {}
        self._lines: list[str] = []

    def _job(self) -> dict[str, Any]:
        try:
            job = describe_job(self.batch, self.job_id)
        except Exception as exc:
            raise ProviderError(f"AWS Batch: describe_jobs {self.job_id}: "
                                f"{code(exc) or exc}") from None
        if job is None:
            raise ProviderError(f"AWS Batch has no job {self.job_id}")
        return job

    def status(self) -> JobStatus:
        return job_status(self._job())

    def _fetch(self) -> None:
        try:
            streams = log_streams(self._job())
        except ProviderError:
            return
        for stream in streams:
            token = self._tokens.get(stream)
            while True:
                kwargs: dict[str, Any] = {"logGroupName": self.log_group,
                                          "logStreamName": stream, "startFromHead": True}
                if token:
                    kwargs["nextToken"] = token
                try:
                    page = self.logs.get_log_events(**kwargs)
                except Exception as exc:
                    if code(exc) == "ResourceNotFoundException":   # not written yet
                        break
                    raise ProviderError(f"CloudWatch Logs: {stream}: {code(exc) or exc}") \
                        from None
                self._lines += [str(e.get("message", "")).rstrip("\n")
                                for e in page.get("events") or []]
                new = page.get("nextForwardToken")
                if not new or new == token:
                    break
                token = new
            self._tokens[stream] = token

    def _view(self, name: str) -> bytes:
        events = name == "events"
        return "".join(line + "\n" for line in self._lines
                       if line.startswith(EVENT_PREFIX) == events).encode()

    def read(self, name: str, offset: int) -> bytes:
        """The job's ``log`` (its lines but the events) or ``events`` from byte ``offset``; new
        lines are fetched once what is kept here has been read."""
        data = self._view(name)
        if len(data) <= offset or not self._tokens:
            self._fetch()
            data = self._view(name)
        return data[offset:]

    def stop(self) -> bool:
        """Ask Batch to end the job: its container gets SIGTERM (the engine checkpoints to the
        bucket and exits), then SIGKILL after ECS's stop timeout."""
        try:
            self.batch.terminate_job(jobId=self.job_id, reason="dqlctl stop: checkpoint and end")
        except Exception as exc:
            raise ProviderError(f"AWS Batch: terminate_job {self.job_id}: "
                                f"{code(exc) or exc}") from None
        return True

    def close(self) -> None:
        """Nothing held open (boto3 clients are the provider's)."""
