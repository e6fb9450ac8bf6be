"""Chute's Python client: jobs, resumable parallel uploads, results.

from chute.client import Client
chute = Client.sign_in("http://127.0.0.1:8000", "admin", "password")
job = chute.submit("sales.csv")   # create a job, upload the file, wait for the result

In a script or pipeline, with an API token (`chute token create`) in CHUTE_TOKEN:
chute = Client.from_env("https://chute.example.com")
"""

from chute.client.api import DEFAULT_SERVER, Client
from chute.client.errors import ApiError, ChuteClientError, UploadError
from chute.client.models import ApiToken, Job, ServerConfig, UploadStatus
from chute.client.progress import Progress
from chute.client.retry import RetryPolicy
from chute.client.upload import UploadSummary

__all__ = [
    "DEFAULT_SERVER",
    "ApiError",
    "ApiToken",
    "ChuteClientError",
    "Client",
    "Job",
    "Progress",
    "RetryPolicy",
    "ServerConfig",
    "UploadError",
    "UploadStatus",
    "UploadSummary",
]
